package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/forward"
	"github.com/pgwarden/pgwarden/internal/grantclient"
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
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, connectUsage+fs.FlagUsages())
			return exitOK
		}
		return clientUsageFail(stderr, "connect", fmt.Errorf("%w (pgwarden connect --help lists the flags)", err))
	}
	if fs.NArg() > 0 {
		return clientUsageFail(stderr, "connect", fmt.Errorf("unexpected argument %q: connect takes only flags", fs.Arg(0)))
	}
	log, err := newLogger(c.LogFormat, c.LogLevel)
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
		if network, err = c.requestGrant(ctx, bgCtx, &bg, tlsCfg.RootCAs, getenv, log); err != nil {
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
			fmt.Fprintf(stderr, "pgwarden connect: %v\n", err)
			return exitRuntime
		}
		lns = append(lns, ln)
	}
	if loader != nil {
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := loader.Watch(bgCtx); err != nil {
				log.Warn("watching the client certificate failed; reload it with SIGHUP", zap.Error(err))
			}
		}()
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		bg.Add(1)
		go func() {
			defer bg.Done()
			for {
				select {
				case <-hup:
					_ = loader.Reload() // a failure is logged, and the old pair stays
				case <-bgCtx.Done():
					return
				}
			}
		}()
	}

	serveErr := make(chan error, len(lns))
	addrs := make([]string, len(lns))
	for i, ln := range lns {
		addrs[i] = ln.Addr().String()
		go func() { serveErr <- fwd.Serve(ln) }()
	}
	log.Info("pgwarden connect listening", zap.Strings("listen", addrs), zap.String("gateway", c.To),
		zap.String("server_name", tlsCfg.ServerName), zap.Bool("client_certificate", loader != nil), zap.String("version", buildVersion()))

	code := exitOK
	select {
	case <-ctx.Done():
		log.Info("shutting down: listeners closed, draining sessions", zap.Int("sessions", fwd.Sessions()), zap.Duration("drain_timeout", c.DrainTimeout))
	case err := <-serveErr:
		log.Error("listener failed", zap.Error(err))
		code = exitRuntime
	}
	fwd.Shutdown()
	dctx, dcancel := context.WithTimeout(context.Background(), c.DrainTimeout)
	defer dcancel()
	if n := fwd.Drain(dctx); n > 0 {
		log.Warn("drain timeout passed; remaining sessions closed", zap.Int("sessions", n))
	}
	bgCancel()
	log.Info("pgwarden connect stopped")
	return code
}

// validate checks the flags together and returns the parsed listen
// addresses. Every problem is reported, one per line, naming its flag.
func (c *connectConfig) validate() ([]forward.ListenAddr, error) {
	var errs []error
	if c.To == "" {
		errs = append(errs, errors.New("--to is required: the gateway's HOST:PORT"))
	} else if host, port, err := net.SplitHostPort(c.To); err != nil || host == "" {
		errs = append(errs, fmt.Errorf("--to %s: want HOST:PORT, e.g. db.example.com:5432 or [2001:db8::1]:5432", c.To))
	} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		errs = append(errs, fmt.Errorf("--to %s: port %q is not a number from 1 to 65535", c.To, port))
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

// requestGrant obtains the first grant (before anything listens: without
// it the gateway would refuse every connection) and keeps it renewed in
// the background. It returns the network to dial the gateway with, pinned
// to the family of the gateway's first address: a grant is for the source
// address the server saw, so the grant request and the database
// connections must leave from the same family.
func (c *connectConfig) requestGrant(ctx, bgCtx context.Context, bg *sync.WaitGroup, roots *x509.CertPool, getenv func(string) string, log *zap.Logger) (string, error) {
	network, err := grantclient.Family(ctx, c.To)
	if err != nil {
		return "", err
	}
	var tokens grantclient.TokenSource = grantclient.EnvToken{Name: c.TokenEnv, Getenv: getenv}
	if c.GitHub {
		aud := c.Audience
		if aud == "" {
			aud = urlOrigin(c.GrantURL)
		}
		tokens = grantclient.GitHubToken{Audience: aud, Getenv: getenv}
	}
	gc, err := grantclient.New(grantclient.Config{URL: c.GrantURL, TTL: c.TTL, Tokens: tokens, RootCAs: roots, Network: network})
	if err != nil {
		return "", err
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	g, err := gc.Request(rctx)
	if err != nil {
		return "", err
	}
	log.Info("grant obtained", zap.String("grant_id", g.ID), zap.String("source", g.Source), zap.Time("until", g.Until),
		zap.Strings("users", g.Users), zap.Strings("databases", g.Databases))
	bg.Add(1)
	go func() {
		defer bg.Done()
		gc.Keep(bgCtx, g, log, nil)
	}()
	return network, nil
}

// urlOrigin is scheme://host[:port] of u (u itself if it does not parse).
func urlOrigin(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return u
	}
	return p.Scheme + "://" + p.Host
}

// tlsClientFlags are the TLS flags connect and probe share, named after
// libpq's connection parameters.
type tlsClientFlags struct {
	SSLRootCert     string
	SSLCert, SSLKey string
	ServerName      string
	DirectTLS       bool
}

// register defines the flags; peer names what is verified, defaultName
// where the checked name comes from, certNote says more about --sslcert.
func (f *tlsClientFlags) register(fs *pflag.FlagSet, peer, defaultName, certNote string) {
	fs.StringVar(&f.SSLRootCert, "sslrootcert", "", "CA certificates (PEM) that verify "+peer+" (default: the system roots)")
	fs.StringVar(&f.SSLCert, "sslcert", "", "client certificate chain (PEM) to present when asked"+certNote)
	fs.StringVar(&f.SSLKey, "sslkey", "", "its private key (PEM)")
	fs.StringVar(&f.ServerName, "server-name", "", "name the certificate of "+peer+" must carry (default: "+defaultName+")")
	fs.BoolVar(&f.DirectTLS, "direct-tls", false, "start TLS at once with ALPN postgresql (PostgreSQL 17 sslnegotiation=direct) instead of an SSLRequest")
}

// config loads the files the flags name into a clienttls.Config; host is
// the name verified without --server-name. The loader (nil without
// --sslcert) can watch the certificate files. Every problem is returned.
func (f *tlsClientFlags) config(host string, log *zap.Logger) (clienttls.Config, *certs.Loader, error) {
	cfg := clienttls.Config{ServerName: f.ServerName, DirectTLS: f.DirectTLS}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	var errs []error
	var err error
	if cfg.RootCAs, err = loadRootCAs(f.SSLRootCert); err != nil {
		errs = append(errs, err)
	}
	var loader *certs.Loader
	switch {
	case (f.SSLCert == "") != (f.SSLKey == ""):
		errs = append(errs, errors.New("--sslcert and --sslkey go together: give both or neither"))
	case f.SSLCert != "":
		if loader, err = certs.NewLoader(f.SSLCert, f.SSLKey, log); err != nil {
			// The Loader, written for serve, names serve's flags.
			errs = append(errs, errors.New(clientFlagNames.Replace(err.Error())))
		} else {
			cfg.ClientCertificate = loader.Current
		}
	}
	return cfg, loader, errors.Join(errs...)
}

// clientFlagNames renames the certs package's server flag names in its
// messages to the client's.
var clientFlagNames = strings.NewReplacer("--tls-cert", "--sslcert", "--tls-key", "--sslkey")

// loadRootCAs reads --sslrootcert, or returns nil (the system roots).
func loadRootCAs(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("--sslrootcert %s: %w", file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("--sslrootcert %s: no PEM CERTIFICATE block found", file)
	}
	return pool, nil
}

// clientUsageFail prints a usage or configuration problem of connect or
// probe, one line each, and returns exit status 2 (never one of probe's
// layer statuses 10-17).
func clientUsageFail(stderr io.Writer, cmd string, err error) int {
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "pgwarden %s: %s\n", cmd, line)
	}
	return exitUsage
}
