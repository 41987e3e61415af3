package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/grants"
)

// grantsAdminConfig is what `grants add|list|revoke` take.
type grantsAdminConfig struct {
	Admin        string
	JSON         bool
	TTL          time.Duration
	Reason       string
	Users        []string
	Databases    []string
	Route        string
	KeepSessions bool
}

// runGrantsAdmin is `pgwarden grants add|list|revoke`: a client of the
// admin endpoint, like `pgwarden bans`.
func runGrantsAdmin(sub string, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &grantsAdminConfig{}
	fs := pflag.NewFlagSet("grants "+sub, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&c.Admin, "admin", admin.DefaultAddr, "HOST:PORT of the admin endpoint (env PGWARDEN_ADMIN)")
	switch sub {
	case "add":
		fs.DurationVar(&c.TTL, "ttl", 0, "how long the grant lasts, e.g. 30m (required; capped by the gateway's --grant-max-ttl)")
		fs.StringVar(&c.Reason, "reason", "", "why (required; in every audit line)")
		fs.StringArrayVar(&c.Users, "user", nil, "role the source may log in as (repeatable; default: any)")
		fs.StringArrayVar(&c.Databases, "database", nil, "database the source may connect to (repeatable; default: any)")
		fs.StringVar(&c.Route, "route", "", "the one route the grant is for (default: every route)")
	case "list":
		fs.BoolVar(&c.JSON, "json", false, "print the endpoint's JSON instead of a table")
	case "revoke":
		fs.BoolVar(&c.KeepSessions, "keep-sessions", false, "leave the sessions the grant admitted running")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, grantsUsage+"\nFlags:\n"+fs.FlagUsages())
			return exitOK
		}
		return grantsUsageError(stderr, sub, err.Error())
	}
	if !fs.Changed("admin") {
		if env := getenv("PGWARDEN_ADMIN"); env != "" {
			c.Admin = env
		}
	}
	if err := c.validate(sub, fs); err != nil {
		return grantsUsageError(stderr, sub, err.Error())
	}

	cl := admin.NewClient(c.Admin)
	var err error
	switch sub {
	case "add":
		var g admin.GrantJSON
		var data []byte
		g, data, err = cl.AddGrant(admin.GrantRequest{
			Source: fs.Arg(0), TTL: c.TTL.String(), Reason: c.Reason, Users: c.Users, Databases: c.Databases, Route: c.Route,
		})
		if err == nil {
			_, err = stdout.Write(data) // one JSON object, one line
			verb := "granted"
			if g.Extended {
				verb = "extended"
			}
			fmt.Fprintf(stderr, "pgwarden: %s %s until %s (grant %s)\n", verb, grants.SourceString(g.Source), g.Until.UTC().Format(time.RFC3339), g.ID)
		}
	case "list":
		err = listGrants(cl, stdout, c.JSON)
	case "revoke":
		if err = cl.RevokeGrant(fs.Arg(0), c.KeepSessions); err == nil {
			kept := ""
			if c.KeepSessions {
				kept = " (its sessions keep running)"
			}
			fmt.Fprintf(stdout, "revoked %s%s\n", fs.Arg(0), kept)
		}
	}
	return adminExit(stderr, err)
}

// validate checks the arguments before anything is sent, naming the flag.
func (c *grantsAdminConfig) validate(sub string, fs *pflag.FlagSet) error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Admin); err != nil {
		errs = append(errs, fmt.Errorf("--admin %q: expected HOST:PORT", c.Admin))
	}
	switch sub {
	case "list":
		if fs.NArg() > 0 {
			errs = append(errs, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
		}
	case "add":
		if fs.NArg() != 1 {
			errs = append(errs, errors.New("expected one SOURCE: an IP address or CIDR"))
		} else if _, err := grants.ParseSource(fs.Arg(0)); err != nil {
			errs = append(errs, err)
		}
		if !fs.Changed("ttl") {
			errs = append(errs, errors.New("--ttl is required: how long the grant lasts, e.g. --ttl 30m"))
		} else if c.TTL < grants.MinTTL {
			errs = append(errs, fmt.Errorf("--ttl %s: want at least %s, e.g. --ttl 30m", c.TTL, grants.MinTTL))
		}
		if strings.TrimSpace(c.Reason) == "" {
			errs = append(errs, errors.New("--reason is required: why the source needs access (it is audited)"))
		}
	case "revoke":
		if fs.NArg() != 1 {
			errs = append(errs, errors.New("expected one grant ID (g-…) or SOURCE (IP address or CIDR)"))
		}
	}
	return errors.Join(errs...)
}

func grantsUsageError(stderr io.Writer, sub, msg string) int {
	for _, line := range strings.Split(msg, "\n") {
		fmt.Fprintf(stderr, "pgwarden: grants %s: %s (see pgwarden grants --help)\n", sub, line)
	}
	return exitUsage
}

// listGrants prints the grants as a table, or the endpoint's JSON as it
// came.
func listGrants(c *admin.Client, stdout io.Writer, asJSON bool) error {
	gs, data, err := c.Grants()
	if err != nil {
		return err
	}
	if asJSON {
		_, err := stdout.Write(data)
		return err
	}
	if len(gs) == 0 {
		fmt.Fprintln(stdout, "no active grants")
		return nil
	}
	any := func(l []string) string {
		if len(l) == 0 {
			return "*"
		}
		return strings.Join(l, ",")
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSOURCE\tROUTE\tUNTIL\tUSERS\tDATABASES\tCREATED_BY\tREASON")
	for _, g := range gs {
		route := g.Route
		if route == "" {
			route = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, grants.SourceString(g.Source), route, g.Until.UTC().Format(time.RFC3339),
			any(g.Users), any(g.Databases), clipCell(g.CreatedBy), clipCell(g.Reason))
	}
	return tw.Flush()
}

// clipCell keeps a free-text cell on one line and short: a token's sub or
// a reason may be long, and the table is for reading.
func clipCell(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > 60 {
		return string(r[:59]) + "…"
	}
	return s
}
