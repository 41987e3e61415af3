package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/admin"
)

const bansUsage = `Usage:
  pgwarden bans list  [--admin HOST:PORT] [--json]       show active bans
  pgwarden bans ban   IP|CIDR [--for DUR] [--admin ...]  ban a source (without --for: the next escalated ban time)
  pgwarden bans unban IP|CIDR [--admin ...]              lift a ban

These talk to the admin endpoint of a running "pgwarden serve --admin HOST:PORT".
--admin defaults to $PGWARDEN_ADMIN, else ` + admin.DefaultAddr + `.
`

// runBans is `pgwarden bans`.
func runBans(args []string, stdout, stderr io.Writer) int {
	return runBansEnv(args, stdout, stderr, os.Getenv)
}

// runBansEnv is runBans with the environment injected for tests.
func runBansEnv(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, bansUsage)
		return exitUsage
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "list", "ban", "unban":
	case "help", "--help", "-h":
		fmt.Fprint(stdout, bansUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pgwarden: bans: unknown subcommand %q\n\n%s", sub, bansUsage)
		return exitUsage
	}

	fs := pflag.NewFlagSet("bans "+sub, pflag.ContinueOnError)
	// Errors and help are printed below, each to the right stream.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	addr := fs.String("admin", admin.DefaultAddr, "HOST:PORT of the admin endpoint (env PGWARDEN_ADMIN)")
	asJSON, forDur := new(bool), new(time.Duration)
	switch sub {
	case "list":
		fs.BoolVar(asJSON, "json", false, "print the endpoint's JSON instead of a table")
	case "ban":
		fs.DurationVar(forDur, "for", 0, "ban length, e.g. 30m or 24h (default: the next escalated ban time)")
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, bansUsage+"\nFlags:\n"+fs.FlagUsages())
			return exitOK
		}
		return bansUsageError(stderr, sub, err.Error())
	}
	if !fs.Changed("admin") {
		if env := getenv("PGWARDEN_ADMIN"); env != "" {
			*addr = env
		}
	}
	if _, _, err := net.SplitHostPort(*addr); err != nil {
		return bansUsageError(stderr, sub, fmt.Sprintf("--admin %q: expected HOST:PORT", *addr))
	}

	wantArgs := 1
	if sub == "list" {
		wantArgs = 0
	}
	if fs.NArg() != wantArgs {
		if wantArgs == 0 {
			return bansUsageError(stderr, sub, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
		}
		return bansUsageError(stderr, sub, "expected one IP address or CIDR prefix")
	}
	if sub == "ban" && fs.Changed("for") && *forDur <= 0 {
		return bansUsageError(stderr, sub, "--for must be positive, e.g. 30m; omit it for the escalated ban time")
	}
	if wantArgs == 1 {
		if err := admin.CheckSource(fs.Arg(0)); err != nil {
			return bansUsageError(stderr, sub, err.Error())
		}
	}

	c := admin.NewClient(*addr)
	var err error
	switch sub {
	case "list":
		err = listBans(c, stdout, *asJSON)
	case "ban":
		var b acl.BanInfo
		if b, err = c.Ban(fs.Arg(0), *forDur); err == nil {
			fmt.Fprintf(stdout, "banned %s until %s (ban #%d)\n", b.IP, b.Until.UTC().Format(time.RFC3339), b.Bans)
		}
	case "unban":
		if err = c.Unban(fs.Arg(0)); err == nil {
			fmt.Fprintf(stdout, "unbanned %s\n", fs.Arg(0))
		}
	}
	return adminExit(stderr, err)
}

// adminExit reports the result of an admin endpoint request and returns
// the exit code: 2 when the endpoint refused what was typed (400).
func adminExit(stderr io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "pgwarden: %s\n", flagText(err))
	var ae *admin.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusBadRequest {
		return exitUsage
	}
	return exitRuntime
}

func bansUsageError(stderr io.Writer, sub, msg string) int {
	fmt.Fprintf(stderr, "pgwarden: bans %s: %s (see pgwarden bans --help)\n", sub, msg)
	return exitUsage
}

// listBans prints the bans as a table, or the endpoint's JSON as it came.
func listBans(c *admin.Client, stdout io.Writer, asJSON bool) error {
	bans, data, err := c.Bans()
	if err != nil {
		return err
	}
	if asJSON {
		_, err := stdout.Write(data)
		return err
	}
	if len(bans) == 0 {
		fmt.Fprintln(stdout, "no active bans")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tUNTIL\tFAILURES\tBANS")
	for _, b := range bans {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", b.IP, b.Until.UTC().Format(time.RFC3339), b.Failures, b.Bans)
	}
	return tw.Flush()
}
