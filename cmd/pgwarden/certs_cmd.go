package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/certs"
)

const certsUsage = `Usage:
  pgwarden certs init  --dir DIR --host NAME [--host IP ...] [--force] [--port N]
      write a private CA (DIR/ca.crt, DIR/ca.key) and a server certificate
      for those names (DIR/server.crt, DIR/server.key)
  pgwarden certs renew --dir DIR [--host NAME ...]
      replace DIR/server.crt and DIR/server.key with a new certificate from
      the same CA (same names unless --host); the CA is left alone
  pgwarden certs init-client-ca --dir DIR [--force]
      (or certs init --client-ca-only) write a CA that signs client
      certificates only (DIR/ca.crt, DIR/ca.key) and its empty revocation
      list (DIR/crl.pem): the key to give CI
  pgwarden certs issue --dir DIR --client NAME [--ttl 30d] [--force] [--port N]
      issue a client certificate with CN=NAME (DIR/NAME.crt, DIR/NAME.key)
  pgwarden certs revoke --dir DIR [--reason R] [--next-update 30d] NAME|SERIAL
      add the certificates issued as NAME (or the serial number) to DIR/crl.pem
  pgwarden certs crl --dir DIR [--next-update 30d]
      re-sign DIR/crl.pem (same entries, new next update), creating it if absent
--port N (init, issue): the gateway's listen port, for the psql line they
print (PORT otherwise)
`

// runCerts is `pgwarden certs init|renew|init-client-ca|issue|revoke|crl`. The work is in package certs;
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
	case "renew":
		return runCertsRenew(args[1:], stdout, stderr)
	case "init-client-ca":
		return runCertsInit(append([]string{"--client-ca-only"}, args[1:]...), stdout, stderr)
	case "issue":
		return runCertsIssue(args[1:], stdout, stderr)
	case "revoke":
		return runCertsRevoke(args[1:], stdout, stderr)
	case "crl":
		return runCertsCRL(args[1:], stdout, stderr)
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
	clientOnly := fs.Bool("client-ca-only", false, "write only a CA for client certificates (DIR/ca.crt, DIR/ca.key) and its revocation list (DIR/crl.pem)")
	port := portFlag(fs)
	if code, done := parseCertsFlags(fs, args, 0, stdout, stderr); done {
		return code
	}
	portText, err := hintPort(*port)
	if err != nil {
		return certsFail(stderr, err, exitUsage)
	}
	if *clientOnly {
		if len(*hosts) > 0 {
			return certsFail(stderr, errors.New("--host does not go with --client-ca-only: a client CA makes no server certificate"), exitUsage)
		}
		return certsInitClientCA(*dir, *force, stdout, stderr)
	}
	f, err := certs.InitCA(*dir, *hosts, *force)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	fmt.Fprintf(stdout, `wrote %s  (CA certificate, until %s: give it to clients)
wrote %s  (CA key, mode 0600: only "certs issue" needs it; keep it off the gateway host if you can)
wrote %s  (server certificate for %v, until %s)
wrote %s  (server key, mode 0600)

Run the gateway with:
  pgwarden serve --tls-cert %s --tls-key %s ...
Clients verify it with:
  psql "host=%s port=%s dbname=DB user=ROLE sslmode=verify-full sslrootcert=%s"
`, f.CACert, dateOf(f.CANotAfter), f.CAKey, f.ServerCert, f.Hosts, dateOf(f.ServerNotAfter), f.ServerKey,
		f.ServerCert, f.ServerKey, f.Hosts[0], portText, f.CACert)
	return exitOK
}

func runCertsIssue(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("certs issue", pflag.ContinueOnError)
	dir := fs.String("dir", "", "directory holding ca.crt and ca.key from certs init")
	client := fs.String("client", "", "certificate CN; by default the postgres role it may log in as")
	ttl := fs.String("ttl", "30d", "validity, e.g. 12h for a CI runner or 90d")
	force := fs.Bool("force", false, "replace an existing DIR/NAME.crt and DIR/NAME.key")
	port := portFlag(fs)
	if code, done := parseCertsFlags(fs, args, 0, stdout, stderr); done {
		return code
	}
	portText, err := hintPort(*port)
	if err != nil {
		return certsFail(stderr, err, exitUsage)
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
	rootCert, rootNote := cf.CACert, ""
	if cf.ClientCA {
		rootCert = "SERVER-CA.crt"
		rootNote = fmt.Sprintf("\nsslrootcert is the CA of the gateway's server certificate (ca.crt of its certs init):\n%s signs client certificates only.", cf.CACert)
	}
	fmt.Fprintf(stdout, `wrote %s  (client certificate CN=%s, serial %s, until %s)
wrote %s  (client key, mode 0600)

Connect with:
  psql "host=%s port=%s dbname=DB user=%s sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s"%s
The gateway accepts it when started with --tls-client-ca %s (the role must equal
the CN unless --tls-map-user %s=ROLE says otherwise).
`, cf.Cert, *client, cf.Serial.Text(16), cf.NotAfter.UTC().Format(time.RFC3339), cf.Key,
		host, portText, *client, rootCert, cf.Cert, cf.Key, rootNote, cf.CACert, *client)
	return exitOK
}

func certsInitClientCA(dir string, force bool, stdout, stderr io.Writer) int {
	f, err := certs.InitClientCA(dir, force)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	fmt.Fprintf(stdout, `wrote %s  (client CA certificate, until %s: the gateway's --tls-client-ca)
wrote %s  (client CA key, mode 0600: what CI needs for "certs issue"; it cannot make a server certificate)
wrote %s  (its revocation list, empty, next update %s: the gateway's --tls-client-crl)

Run the gateway with:
  pgwarden serve --tls-client-ca %s --tls-client-crl %s ...
Issue a client certificate (e.g. in CI) with:
  pgwarden certs issue --dir %s --client NAME --ttl 12h
Re-sign the revocation list before %s (e.g. weekly from cron);
once it has expired, every client certificate of this CA is refused:
  pgwarden certs crl --dir %s
`, f.CACert, dateOf(f.CANotAfter), f.CAKey, f.CRL, dateOf(f.CRLNextUpdate),
		f.CACert, f.CRL, dir, dateOf(f.CRLNextUpdate), dir)
	return exitOK
}

func runCertsRenew(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("certs renew", pflag.ContinueOnError)
	dir := fs.String("dir", "", "directory holding ca.crt, ca.key and server.crt from certs init")
	hosts := fs.StringArray("host", nil, "DNS name or IP of the new certificate (repeatable; default: the current certificate's names)")
	if code, done := parseCertsFlags(fs, args, 0, stdout, stderr); done {
		return code
	}
	r, err := certs.RenewServer(*dir, *hosts)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	capped := ""
	if r.CappedByCA {
		capped = "; the CA ends then: plan a new CA (certs init --force) before"
	}
	fmt.Fprintf(stdout, `wrote %s  (server certificate for %v, serial %s, until %s%s)
wrote %s  (server key, mode 0600)
The CA is unchanged, so clients' sslrootcert and client certificates stay valid.

A gateway serving %s picks the new pair up by itself (it watches the
files; SIGHUP also works); sessions already open keep the old one.
`, r.ServerCert, r.Hosts, r.Serial, dateOf(r.NotAfter), capped, r.ServerKey, r.ServerCert)
	return exitOK
}

func runCertsRevoke(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("certs revoke", pflag.ContinueOnError)
	dir := fs.String("dir", "", "CA directory (certs init or init-client-ca) that issued the certificate")
	reason := fs.String("reason", "", "RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, superseded or cessationOfOperation")
	next := fs.String("next-update", "30d", "how long the written CRL is valid; the gateway refuses the CA's certificates once it has expired")
	if code, done := parseCertsFlags(fs, args, 1, stdout, stderr); done {
		return code
	}
	if fs.NArg() != 1 {
		return certsFail(stderr, errors.New("NAME or SERIAL is required: the client name given to certs issue, or the certificate's serial number"), exitUsage)
	}
	validity, err := certs.ParseDuration(certs.FieldNextUpdate, *next)
	if err != nil {
		return certsFail(stderr, err, exitUsage)
	}
	res, err := certs.Revoke(*dir, fs.Arg(0), *reason, validity)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	for _, c := range res.Certs {
		what := "serial " + c.Serial.Text(16)
		if c.Name != "" {
			what = fmt.Sprintf("%s (CN=%s, until %s)", what, c.Name, dateOf(c.NotAfter))
		}
		switch {
		case c.Already:
			fmt.Fprintf(stdout, "already revoked: %s\n", what)
		case c.Name == "":
			fmt.Fprintf(stdout, "revoked %s: not in %s/%s, revoked anyway\n", what, *dir, certs.IssuedName)
		default:
			fmt.Fprintf(stdout, "revoked %s\n", what)
		}
	}
	if res.Expired > 0 {
		fmt.Fprintf(stdout, "skipped %d expired certificate(s) issued as %s\n", res.Expired, fs.Arg(0))
	}
	if res.CRL.Path == "" {
		fmt.Fprintln(stdout, "nothing new to revoke; the revocation list is unchanged")
		return exitOK
	}
	printCRL(stdout, res.CRL)
	fmt.Fprintf(stdout, `
A gateway with --tls-client-crl %s reloads it by itself (it watches the
file; SIGHUP also works) and refuses the certificate from its next
connection on; sessions already open are not ended.
`, res.CRL.Path)
	return exitOK
}

func runCertsCRL(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("certs crl", pflag.ContinueOnError)
	dir := fs.String("dir", "", "CA directory (certs init or init-client-ca)")
	next := fs.String("next-update", "30d", "how long the written CRL is valid; the gateway refuses the CA's certificates once it has expired")
	if code, done := parseCertsFlags(fs, args, 0, stdout, stderr); done {
		return code
	}
	validity, err := certs.ParseDuration(certs.FieldNextUpdate, *next)
	if err != nil {
		return certsFail(stderr, err, exitUsage)
	}
	info, err := certs.RefreshCRL(*dir, validity)
	if err != nil {
		return certsFail(stderr, err, certsExitCode(err))
	}
	printCRL(stdout, info)
	return exitOK
}

func printCRL(w io.Writer, c certs.CRLInfo) {
	fmt.Fprintf(w, "wrote %s  (revocation list number %s, %d revoked, next update %s)\n",
		c.Path, c.Number, c.Entries, c.NextUpdate.UTC().Format(time.RFC3339))
}

func dateOf(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// portFlag is --port, which only fills in the port of the psql line a
// command prints: the certificates do not depend on it.
func portFlag(fs *pflag.FlagSet) *int {
	return fs.Int("port", 0, "the gateway's listen port, for the psql line printed (default: the word PORT)")
}

// hintPort is the port the printed psql line shows: the one given, else
// PORT for the reader to fill in, since nothing here knows which port the
// gateway will listen on.
func hintPort(port int) (string, error) {
	switch {
	case port == 0:
		return "PORT", nil
	case port < 0 || port > 65535:
		return "", fmt.Errorf("--port %d: want 1-65535, the port of the gateway's --listen", port)
	}
	return strconv.Itoa(port), nil
}

// parseCertsFlags parses args into fs; done reports that the command should
// return code now (help, a flag error, more than maxArgs arguments, or no
// --dir).
func parseCertsFlags(fs *pflag.FlagSet, args []string, maxArgs int, stdout, stderr io.Writer) (code int, done bool) {
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
	if fs.NArg() > maxArgs {
		if maxArgs == 0 {
			return certsFail(stderr, fmt.Errorf("unexpected argument %q: %s takes only flags", fs.Arg(0), fs.Name()), exitUsage), true
		}
		return certsFail(stderr, fmt.Errorf("unexpected argument %q: %s takes one NAME or SERIAL", fs.Arg(maxArgs), fs.Name()), exitUsage), true
	}
	// Every certs command works on a directory.
	if f := fs.Lookup("dir"); f != nil && f.Value.String() == "" {
		return certsFail(stderr, errors.New("--dir is required"), exitUsage), true
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
	fmt.Fprintf(stderr, "pgwarden certs: %s\n", flagText(err))
	return code
}
