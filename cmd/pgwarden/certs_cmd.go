package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/spf13/pflag"
)

const certsUsage = `Usage:
  pgwarden certs init  --dir DIR --host NAME [--host IP ...] [--force]
      write a private CA (DIR/ca.crt, DIR/ca.key) and a server certificate
      for those names (DIR/server.crt, DIR/server.key)
  pgwarden certs issue --dir DIR --client NAME [--ttl 30d] [--force]
      issue a client certificate with CN=NAME (DIR/NAME.crt, DIR/NAME.key)
`

// runCerts is `pgwarden certs init|issue`. The work is in package certs;
// this only parses flags, prints what was written and how clients use it,
// and maps errors to exit codes (2 for bad arguments, 1 otherwise).
func runCerts(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, certsUsage)
		return exitUsage
	}
	switch args[0] {
	case "init":
		return runCertsInit(args[1:], stdout, stderr)
	case "issue":
		return runCertsIssue(args[1:], stdout, stderr)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, certsUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pgwarden certs: unknown command %q\n\n%s", args[0], certsUsage)
		return exitUsage
	}
}

func runCertsInit(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("certs init", pflag.ContinueOnError)
	dir := fs.String("dir", "", "directory for ca.crt, ca.key, server.crt, server.key (created 0700)")
	hosts := fs.StringArray("host", nil, "DNS name or IP clients connect to (repeatable; the first is the CN)")
	force := fs.Bool("force", false, "replace existing files (a new CA invalidates every issued certificate)")
	if code, done := parseCertsFlags(fs, args, stdout, stderr); done {
		return code
	}
	if *dir == "" {
		return certsFail(stderr, errors.New("--dir is required"), exitUsage)
	}
	f, err := certs.InitCA(*dir, *hosts, *force)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	date := func(t time.Time) string { return t.UTC().Format(time.DateOnly) }
	fmt.Fprintf(stdout, `wrote %s  (CA certificate, until %s: give it to clients)
wrote %s  (CA key, mode 0600: only "certs issue" needs it; keep it off the gateway host if you can)
wrote %s  (server certificate for %v, until %s)
wrote %s  (server key, mode 0600)

Run the gateway with:
  pgwarden serve --tls-cert %s --tls-key %s ...
Clients verify it with:
  psql "host=%s port=5432 dbname=DB user=ROLE sslmode=verify-full sslrootcert=%s"
`, f.CACert, date(f.CANotAfter), f.CAKey, f.ServerCert, f.Hosts, date(f.ServerNotAfter), f.ServerKey,
		f.ServerCert, f.ServerKey, f.Hosts[0], f.CACert)
	return exitOK
}

func runCertsIssue(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("certs issue", pflag.ContinueOnError)
	dir := fs.String("dir", "", "directory holding ca.crt and ca.key from certs init")
	client := fs.String("client", "", "certificate CN; by default the postgres role it may log in as")
	ttl := fs.String("ttl", "30d", "validity, e.g. 12h for a CI runner or 90d")
	force := fs.Bool("force", false, "replace an existing DIR/NAME.crt and DIR/NAME.key")
	if code, done := parseCertsFlags(fs, args, stdout, stderr); done {
		return code
	}
	if *dir == "" {
		return certsFail(stderr, errors.New("--dir is required"), exitUsage)
	}
	d, err := certs.ParseTTL(*ttl)
	if err != nil {
		return certsFail(stderr, err, exitUsage)
	}
	cf, err := certs.IssueClient(*dir, *client, d, *force)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	host := cf.ServerName
	if host == "" {
		host = "HOST"
	}
	fmt.Fprintf(stdout, `wrote %s  (client certificate CN=%s, until %s)
wrote %s  (client key, mode 0600)

Connect with:
  psql "host=%s port=5432 dbname=DB user=%s sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s"
The gateway accepts it when started with --tls-client-ca %s (the role must equal
the CN unless --tls-map-user %s=ROLE says otherwise).
`, cf.Cert, *client, cf.NotAfter.UTC().Format(time.RFC3339), cf.Key,
		host, *client, cf.CACert, cf.Cert, cf.Key, cf.CACert, *client)
	return exitOK
}

// parseCertsFlags parses args into fs; done reports that the command should
// return code now (help, a flag error, or a stray argument).
func parseCertsFlags(fs *pflag.FlagSet, args []string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {} // help is printed below, once, to stdout
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: pgwarden %s [flags]\n\nFlags:\n%s", fs.Name(), fs.FlagUsages())
			return exitOK, true
		}
		// ContinueOnError leaves printing to us.
		fmt.Fprintf(stderr, "pgwarden %s: %v\n", fs.Name(), err)
		fs.PrintDefaults()
		return exitUsage, true
	}
	if fs.NArg() > 0 {
		return certsFail(stderr, fmt.Errorf("unexpected argument %q: %s takes only flags", fs.Arg(0), fs.Name()), exitUsage), true
	}
	return 0, false
}

func certsExitCode(err error) int {
	if errors.Is(err, certs.ErrUsage) {
		return exitUsage
	}
	return exitRuntime
}

// certsFail prints err and returns code.
func certsFail(stderr io.Writer, err error, code int) int {
	fmt.Fprintf(stderr, "pgwarden certs: %v\n", err)
	return code
}
