package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/internal/check"
)

const checkUsage = `Usage: pgwarden check [--config FILE] [serve's flags] [--json] [--sslrootcert FILE]

Checks the configuration pgwarden serve would run, from this host, without
serving: that it is valid (the errors serve would give), that each upstream
accepts connections and postgres is not reachable from outside (on this
host's other addresses, or bound to the wildcard), that no other postgres
answers on 5432-5439 there, that the listen addresses can be bound (or a
running pgwarden holds them), the certificates (key, chain, names, expiry,
key size), the allowlist, the ban state file, the admin address, and
--max-upstream-startups against a local postgresql.conf.

One line per check: ok, WARN or FAIL, the evidence, and the fix. Exit
status 1 if any check failed (a configuration problem is a FAIL of the
config check), 0 otherwise; 2 for a command line that does not parse.

Flags, besides serve's (pgwarden serve --help):
`

// runCheck is `pgwarden check`.
func runCheck(args []string, stdout, stderr io.Writer) int {
	return runCheckEnv(args, stdout, stderr, check.Env{})
}

// runCheckEnv is runCheck with what it reads from the host injected.
func runCheckEnv(args []string, stdout, stderr io.Writer, env check.Env) int {
	extra := pflag.NewFlagSet("check", pflag.ContinueOnError)
	asJSON := extra.Bool("json", false, "print the report as one JSON object")
	rootCA := extra.String("sslrootcert", "", "CA file clients verify the server certificate with (default: ca.crt beside --tls-cert if there is one, else the system roots)")
	cfg, err := parseServeArgsWith(args, "check", extra)
	var rep *check.Report
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, checkUsage+extra.FlagUsages())
		return exitOK
	case err != nil && !errors.As(err, new(fileError)):
		printConfigError(stderr, err)
		return exitUsage
	case err != nil:
		// The file could not be read as a configuration: that is the
		// config check failing, and nothing else can be checked.
		rep = check.ConfigFailure(strings.Split(flagText(err), "\n"))
	default:
		var problems []string
		for _, e := range cfg.loggingErrors() {
			problems = append(problems, flagText(e))
		}
		rep = check.Run(&cfg.Config, check.Options{RootCAs: *rootCA, Names: flagNames, ConfigErrors: problems, Env: env})
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden: %v\n", err)
		return exitRuntime
	}
	if rep.Failed() {
		return exitRuntime
	}
	return exitOK
}
