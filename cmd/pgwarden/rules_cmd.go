package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/rulehits"
)

const rulesUsage = `Usage:
  pgwarden rules [--stale DUR] [--admin HOST:PORT] [--json]

Lists the admission rules (allowlist entries, grants) of a running gateway
that admitted no connection within DUR (default 30d): candidates for
pruning. An entry that never admitted one counts from when the gateway
first ran with it. --stale 0 lists every entry. The counts survive
restarts in the --ban-state file.

It talks to the admin endpoint of "pgwarden serve --admin HOST:PORT";
--admin defaults to $PGWARDEN_ADMIN, else ` + admin.DefaultAddr + `.
`

// defaultStale is how long an entry may go unused before rules lists it.
const defaultStale = 30 * 24 * time.Hour

// runRules is `pgwarden rules`.
func runRules(args []string, stdout, stderr io.Writer) int {
	return runRulesEnv(args, stdout, stderr, os.Getenv, time.Now)
}

// runRulesEnv is runRules with the environment and clock injected.
func runRulesEnv(args []string, stdout, stderr io.Writer, getenv func(string) string, now func() time.Time) int {
	fs := pflag.NewFlagSet("rules", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	addr := fs.String("admin", admin.DefaultAddr, "HOST:PORT of the admin endpoint (env PGWARDEN_ADMIN)")
	stale := fs.String("stale", "30d", "list entries that admitted nothing within this long (e.g. 30d, 12h; 0 lists every entry)")
	asJSON := fs.Bool("json", false, "print the listed entries as JSON, in the admin endpoint's shape")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, rulesUsage+"\nFlags:\n"+fs.FlagUsages())
			return exitOK
		}
		return rulesUsageError(stderr, err.Error())
	}
	if fs.NArg() > 0 {
		return rulesUsageError(stderr, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if !fs.Changed("admin") {
		if env := getenv("PGWARDEN_ADMIN"); env != "" {
			*addr = env
		}
	}
	if _, _, err := net.SplitHostPort(*addr); err != nil {
		return rulesUsageError(stderr, fmt.Sprintf("--admin %q: expected HOST:PORT", *addr))
	}
	var within time.Duration
	if *stale != "0" {
		d, err := certs.ParseDuration(fieldStale, *stale)
		if err != nil {
			return rulesUsageError(stderr, flagText(err))
		}
		within = d
	}

	all, _, err := admin.NewClient(*addr).Rules()
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden: %s\n", flagText(err))
		return exitRuntime
	}
	at := now()
	listed := []rulehits.Hits{}
	for _, h := range all {
		if within == 0 || h.Stale(at, within) {
			listed = append(listed, h)
		}
	}
	if *asJSON {
		data, err := json.Marshal(listed)
		if err != nil {
			fmt.Fprintf(stderr, "pgwarden: encoding: %v\n", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "%s\n", data)
		return exitOK
	}
	if len(listed) == 0 {
		// An entry counted for less than the window is not stale yet, though
		// it may have admitted nothing: say how many are in that case.
		young := 0
		for _, h := range all {
			if h.LastHit == nil {
				young++
			}
		}
		msg := fmt.Sprintf("no stale entry: each of the %d entries admitted a connection within %s", len(all), *stale)
		if young > 0 {
			msg = fmt.Sprintf("no stale entry: %d of the %d entries admitted a connection within %s; not yet counted for %s and with no connection so far: %d",
				len(all)-young, len(all), *stale, *stale, young)
		}
		fmt.Fprintln(stdout, msg)
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tENTRY\tHITS\tLAST HIT")
	for _, h := range listed {
		last := "never (counting since " + h.Since.UTC().Format(time.RFC3339) + ")"
		if h.LastHit != nil {
			last = h.LastHit.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", h.Route, h.Entry, h.Hits, last)
	}
	return flushTable(tw, stderr)
}

func flushTable(tw *tabwriter.Writer, stderr io.Writer) int {
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "pgwarden: %v\n", err)
		return exitRuntime
	}
	return exitOK
}

func rulesUsageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "pgwarden: rules: %s (see pgwarden rules --help)\n", msg)
	return exitUsage
}
