// Command pgwarden is a TLS-terminating access gateway for PostgreSQL: it
// admits only allowlisted, unbanned sources, requires TLS, relays
// authentication while watching its outcome, and then relays bytes.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/pgwarden/pgwarden/internal/gateway"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `pgwarden: a TLS-terminating access gateway for PostgreSQL

Usage:
  pgwarden serve [--config FILE] [flags]   run the gateway (pgwarden serve --help lists the flags)
  pgwarden check [--config FILE] [flags]   check that configuration, and postgres's exposure, from this host
  pgwarden connect --to HOST:PORT [flags]  local plaintext listener carrying clients to a gateway over TLS (stunnel client = yes)
  pgwarden probe HOST:PORT [flags]         check a postgres endpoint layer by layer: why can't I connect?
  pgwarden bans list|ban|unban ...          inspect and change bans through the admin endpoint
  pgwarden rules [--stale DUR]              allowlist entries and grants that admitted nothing lately
  pgwarden grants request --url URL [flags] from a CI job: ask for a time-boxed grant for this runner's address
  pgwarden certs init|issue ...             make a private CA, server and client certificates
  pgwarden health [--url URL]               exit 0 if the gateway is ready (a container's HEALTHCHECK)
  pgwarden version                          print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code: 0 success,
// 1 runtime failure, 2 bad usage or configuration.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "check":
		return runCheck(args[1:], stdout, stderr)
	case "connect":
		return runConnect(args[1:], stdout, stderr)
	case "probe":
		return runProbe(args[1:], stdout, stderr)
	case "bans":
		return runBans(args[1:], stdout, stderr)
	case "rules":
		return runRules(args[1:], stdout, stderr)
	case "grants":
		return runGrants(args[1:], stdout, stderr)
	case "certs":
		return runCerts(args[1:], stdout, stderr)
	case "health":
		return runHealth(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "pgwarden", buildVersion())
		return exitOK
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pgwarden: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// exitCode maps an error to an exit code: usage and configuration errors
// (found before anything listens) are 2.
func exitCode(err error) int {
	var ue usageError
	var ce *gateway.ConfigError
	if errors.As(err, &ue) || errors.As(err, &ce) {
		return exitUsage
	}
	return exitRuntime
}

// buildVersion is the -ldflags version, else the module version Go
// recorded, else "devel".
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		if v != "" && v != "(devel)" {
			return v
		}
	}
	return "devel"
}
