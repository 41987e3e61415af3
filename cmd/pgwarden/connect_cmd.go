package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/forward"
	"github.com/pgwarden/pgwarden/internal/grantclient"
	"github.com/pgwarden/pgwarden/internal/netaddr"
)

const connectUsage = `Usage:
  pgwarden connect --to HOST:PORT [--listen ADDR]... [--sslrootcert FILE] [--sslcert FILE --sslkey FILE]
                   [--server-name NAME] [--direct-tls] [--grant-url URL [--ttl DUR] [--github | --token-env VAR]]

Local clients connect in plaintext (sslmode=disable or prefer) to --listen; each
connection is carried to the gateway --to over TLS, verified (verify-full), with
the client certificate if one is given. Replaces stunnel's "client = yes".

Flags:
`

// connectConfig is everything `pgwarden connect` takes.
type connectConfig struct {
	To                string
	Listen            []string
	AllowRemoteListen bool
	TLS               tlsClientFlags
	GrantURL          string
	TTL               string
	GitHub            bool
	TokenEnv          string
	Audience          string
	DialTimeout       time.Duration
	DrainTimeout      time.Duration
	MaxConnections    int
	LogFormat         string
	LogLevel          string
}

func newConnectFlags(c *connectConfig) *pflag.FlagSet {
	fs := pflag.NewFlagSet("connect", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&c.To, "to", "", "the gateway, HOST:PORT (required)")
	fs.StringArrayVar(&c.Listen, "listen", nil, "127.0.0.1:PORT, [::1]:PORT, or a unix socket directory DIR[:PORT] (DIR/.s.PGSQL.PORT); repeatable (default "+forward.DefaultListen+")")
	fs.BoolVar(&c.AllowRemoteListen, "allow-remote-listen", false, "permit a non-loopback --listen address (anyone reaching it gets into the database with this host's TLS identity)")
	c.TLS.register(fs, "the gateway", "HOST of --to", "; re-read when the file changes")
	fs.StringVar(&c.GrantURL, "grant-url", "", "https://HOST[:PORT] of the gateway's grant endpoint: ask for a grant for this source first, and renew it while running")
	fs.StringVar(&c.TTL, "ttl", "", "grant length to ask for, e.g. 20m (default: the server's)")
	fs.BoolVar(&c.GitHub, "github", false, "take the OIDC token from GitHub Actions (needs permissions: id-token: write)")
	fs.StringVar(&c.TokenEnv, "token-env", "", "take the OIDC token from this environment variable (GitLab id_tokens, other CI)")
	fs.StringVar(&c.Audience, "audience", "", "audience of the GitHub token (default: the --grant-url origin)")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", forward.DefaultDialTimeout, "reaching the gateway: resolve, connect, TLS")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long sessions may finish")
	fs.IntVar(&c.MaxConnections, "max-connections", forward.DefaultMaxConns, "local connections at once")
	fs.StringVar(&c.LogFormat, "log-format", "console", "console or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

// runConnect is `pgwarden connect`.
func runConnect(args []string, stdout, stderr io.Writer) int {
	return runConnectEnv(args, stdout, stderr, os.Getenv)
}

func runConnectEnv(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &connectConfig{}
	fs := newConnectFlags(c)
	if code, done := parseClientFlags(fs, args, "connect", connectUsage, stdout, stderr); done {
		return code
	}
	if fs.NArg() > 0 {
		return clientUsageFail(stderr, "connect", fmt.Errorf("unexpected argument %q: connect takes only flags", fs.Arg(0)))
	}
	log, err := newLogger(c.LogFormat, c.LogLevel, clientFlagNames)
	if err != nil {
		return clientUsageFail(stderr, "connect", err)
	}
	defer func() { _ = log.Sync() }()
	listens, verr := c.validate()
	host, _, _ := net.SplitHostPort(c.To)
	tlsCfg, loader, terr := c.TLS.config(host, log)
	if err := errors.Join(verr, terr); err != nil {
		return clientUsageFail(stderr, "connect", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var bg sync.WaitGroup
	defer bg.Wait()
	bgCtx, bgCancel := context.WithCancel(context.Background())
	defer bgCancel()

	network := "tcp"
	if c.GrantURL != "" {
		network, err = grantclient.Start(ctx, bgCtx, &bg, grantclient.StartConfig{
			Config: grantclient.Config{URL: c.GrantURL, TTL: c.TTL, RootCAs: tlsCfg.RootCAs},
			To:     c.To, GitHub: c.GitHub, Audience: c.Audience, TokenEnv: c.TokenEnv, Getenv: getenv,
		}, log)
		if err != nil {
			fmt.Fprintf(stderr, "pgwarden connect: --grant-url: %v\n", err)
			return exitRuntime
		}
	}

	fwd, err := forward.New(forward.Config{
		To: c.To, Network: network, TLS: tlsCfg, DialTimeout: c.DialTimeout,
		MaxConns: c.MaxConnections, Logger: log,
	})
	if err != nil {
		return clientUsageFail(stderr, "connect", err)
	}
	var lns []net.Listener
	for _, la := range listens {
		ln, err := forward.Listen(la)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			fmt.Fprintf(stderr, "pgwarden connect: %s\n", fielderr.Render(err, clientFlagNames))
			return exitRuntime
		}
		lns = append(lns, ln)
	}
	if loader != nil {
		watchClientCert(bgCtx, &bg, loader, log)
	}

	addrs := make([]string, len(lns))
	for i, ln := range lns {
		addrs[i] = ln.Addr().String()
	}
	log.Info("pgwarden connect listening", zap.Strings("listen", addrs), zap.String("gateway", c.To),
		zap.String("server_name", tlsCfg.ServerName), zap.Bool("client_certificate", loader != nil), zap.String("version", buildVersion()))
	code := exitOK
	if err := fwd.Run(ctx, lns, c.DrainTimeout); err != nil {
		code = exitRuntime
	}
	bgCancel()
	log.Info("pgwarden connect stopped")
	return code
}

// watchClientCert re-reads the client certificate when its files change
// and on SIGHUP, until ctx ends; a failure is logged and the old pair
// stays.
func watchClientCert(ctx context.Context, bg *sync.WaitGroup, loader *certs.Loader, log *zap.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	bg.Add(2)
	go func() {
		defer bg.Done()
		if err := loader.Watch(ctx); err != nil {
			log.Warn("watching the client certificate failed; reload it with SIGHUP", zap.Error(err))
		}
	}()
	go func() {
		defer bg.Done()
		defer signal.Stop(hup)
		for {
			select {
			case <-hup:
				_ = loader.Reload() // a failure is logged, and the old pair stays
			case <-ctx.Done():
				return
			}
		}
	}()
}

// validate checks the flags together and returns the parsed listen
// addresses. Every problem is reported, one per line, naming its flag.
func (c *connectConfig) validate() ([]forward.ListenAddr, error) {
	var errs []error
	if c.To == "" {
		errs = append(errs, errors.New("--to is required: the gateway's HOST:PORT"))
	} else if host, port, err := net.SplitHostPort(c.To); err != nil || host == "" {
		errs = append(errs, fmt.Errorf("--to %s: want HOST:PORT, e.g. db.example.com:5432 or [2001:db8::1]:5432", c.To))
	} else if _, err := netaddr.Port(port, 1); err != nil {
		errs = append(errs, fmt.Errorf("--to %s: %w", c.To, err))
	}
	if len(c.Listen) == 0 {
		c.Listen = []string{forward.DefaultListen}
	}
	var listens []forward.ListenAddr
	for _, spec := range c.Listen {
		la, err := forward.ParseListen(spec, c.AllowRemoteListen)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		listens = append(listens, la)
	}
	if c.GrantURL == "" {
		for _, f := range []struct {
			name string
			set  bool
		}{{"--ttl", c.TTL != ""}, {"--github", c.GitHub}, {"--token-env", c.TokenEnv != ""}, {"--audience", c.Audience != ""}} {
			if f.set {
				errs = append(errs, fmt.Errorf("%s needs --grant-url", f.name))
			}
		}
	} else {
		switch {
		case c.GitHub && c.TokenEnv != "":
			errs = append(errs, errors.New("--github and --token-env exclude each other: choose where the OIDC token comes from"))
		case !c.GitHub && c.TokenEnv == "":
			errs = append(errs, errors.New("--grant-url needs a token: --github (GitHub Actions) or --token-env VAR (GitLab id_tokens, other CI)"))
		}
		if c.TTL != "" {
			if d, err := time.ParseDuration(c.TTL); err != nil || d <= 0 {
				errs = append(errs, fmt.Errorf("--ttl %q: want a positive duration such as 20m", c.TTL))
			}
		}
	}
	if c.DialTimeout <= 0 {
		errs = append(errs, errors.New("--dial-timeout must be positive"))
	}
	if c.MaxConnections <= 0 {
		errs = append(errs, errors.New("--max-connections must be positive"))
	}
	return listens, errors.Join(errs...)
}
