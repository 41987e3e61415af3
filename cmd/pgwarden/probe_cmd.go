package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/internal/netaddr"
	"github.com/pgwarden/pgwarden/internal/probe"
)

const probeUsage = `Usage:
  pgwarden probe HOST:PORT [--sslrootcert FILE] [--sslcert FILE --sslkey FILE] [--server-name NAME] [--direct-tls]
                 [--user U --database D [--password-env VAR]] [--json] [--timeout DUR]

Checks a PostgreSQL endpoint (postgres, PgBouncer, stunnel, a pgwarden gateway)
layer by layer and prints one line per layer, each ok, FAIL or skip with the
evidence: resolve, tcp, negotiate, tls, certificate, client-certificate, auth,
query (auth and query only with --user).

Exit status: 0 when nothing failed; otherwise the first failing layer:
resolve 10, tcp 11, negotiate 12, tls 13, certificate 14, client-certificate 15,
auth 16, query 17. 2 for bad usage.

Flags:
`

// probeConfig is everything `pgwarden probe` takes.
type probeConfig struct {
	TLS            tlsClientFlags
	User, Database string
	PasswordEnv    string
	JSON           bool
	Timeout        time.Duration
}

func newProbeFlags(c *probeConfig) *pflag.FlagSet {
	fs := pflag.NewFlagSet("probe", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	c.TLS.register(fs, "the server", "HOST", "")
	fs.StringVar(&c.User, "user", "", "log in as this role and run SELECT 1 (auth and query layers)")
	fs.StringVar(&c.Database, "database", "", "database to log in to (default: the --user name)")
	fs.StringVar(&c.PasswordEnv, "password-env", "", "name of the environment variable holding the password")
	fs.BoolVar(&c.JSON, "json", false, "print one JSON object with one member per layer")
	fs.DurationVar(&c.Timeout, "timeout", probe.DefaultTimeout, "limit for each network step")
	return fs
}

// runProbe is `pgwarden probe`.
func runProbe(args []string, stdout, stderr io.Writer) int {
	return runProbeEnv(args, stdout, stderr, os.Getenv)
}

func runProbeEnv(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &probeConfig{}
	fs := newProbeFlags(c)
	if code, done := parseClientFlags(fs, args, "probe", probeUsage, stdout, stderr); done {
		return code
	}
	cfg, err := c.build(fs.Args(), getenv)
	if err != nil {
		return clientUsageFail(stderr, "probe", err)
	}
	res := probe.Run(context.Background(), *cfg)
	if c.JSON {
		err = res.WriteJSON(stdout)
	} else {
		err = res.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden probe: writing the result: %v\n", err)
		return exitRuntime
	}
	return res.ExitStatus()
}

// build checks the arguments together and turns them into a probe.Config.
func (c *probeConfig) build(args []string, getenv func(string) string) (*probe.Config, error) {
	var errs []error
	cfg := &probe.Config{Timeout: c.Timeout, RootCAFile: c.TLS.SSLRootCert, User: c.User, Database: c.Database}
	host := ""
	switch len(args) {
	case 0:
		errs = append(errs, errors.New("which server? give HOST:PORT, e.g. pgwarden probe db.example.com:5432"))
	case 1:
		cfg.Address = args[0]
		var port string
		var err error
		host, port, err = net.SplitHostPort(args[0])
		if err != nil || host == "" {
			errs = append(errs, fmt.Errorf("%q: want HOST:PORT, e.g. db.example.com:5432 or [2001:db8::1]:5432", args[0]))
			break
		}
		if _, err := netaddr.Port(port, 1); err != nil {
			errs = append(errs, fmt.Errorf("%q: %w", args[0], err))
		}
	default:
		errs = append(errs, fmt.Errorf("one server at a time: got %s", strings.Join(args, " ")))
	}
	if c.User == "" && c.Database != "" {
		errs = append(errs, errors.New("--database needs --user"))
	}
	if c.User == "" && c.PasswordEnv != "" {
		errs = append(errs, errors.New("--password-env needs --user"))
	}
	if c.PasswordEnv != "" {
		if cfg.Password = getenv(c.PasswordEnv); cfg.Password == "" {
			errs = append(errs, fmt.Errorf("--password-env %s: the variable is empty or not set", c.PasswordEnv))
		}
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("--timeout must be positive"))
	}
	tlsCfg, _, err := c.TLS.config(host, nil)
	if err != nil {
		errs = append(errs, err)
	}
	cfg.TLS = tlsCfg
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cfg, nil
}
