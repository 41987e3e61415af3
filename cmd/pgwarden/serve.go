package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/proxy"
)

// runServe is `pgwarden serve`.
func runServe(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseServeArgs(args)
	if err != nil {
		if errors.Is(err, errHelp) {
			fmt.Fprintf(stdout, "Usage: pgwarden serve [--config FILE] [flags]\n\nFlags given here override the config file, whose keys are the flag names.\n\nFlags:\n%s",
				newServeFlags(&serveConfig{}).FlagUsages())
			return exitOK
		}
		printConfigError(stderr, err)
		return exitCode(err)
	}
	log, err := newLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		printConfigError(stderr, configError{err})
		return exitUsage
	}
	defer func() { _ = log.Sync() }()
	startDebugServer(log)

	gw, err := newGateway(cfg, log)
	if err != nil {
		printConfigError(stderr, err)
		return exitCode(err)
	}
	gw.args = args
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				gw.reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := gw.run(ctx); err != nil {
		log.Error("gateway stopped", zap.Error(err))
		return exitRuntime
	}
	return exitOK
}

// printConfigError prints one line per problem, each naming its flag.
func printConfigError(w io.Writer, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(w, "pgwarden: %s\n", line)
	}
}

// gateway is a running `pgwarden serve`: its routes, their listeners and
// proxy servers, and the shared state (cancel keys, ban jail).
type gateway struct {
	args     []string // serve's command line, re-read on SIGHUP
	cfg      *serveConfig
	log      *zap.Logger
	routes   []*route
	cancels  *proxy.CancelRegistry
	upstream *proxy.UpstreamLimiter // shared: routes to one postgres share its cap
	metrics  *promMetrics
	jail     *acl.Jail
	admin    *adminServer // nil without --admin
	draining atomic.Bool

	// cancel rate-limits cancel requests; shared, so that a source has one
	// budget whichever route it reaches.
	cancel *proxy.CancelLimiter
}

// route is one listen → upstream service at run time.
type route struct {
	cfg       routeConfig
	upstream  proxy.Upstream
	allow     *acl.Allowlist
	loader    *certs.Loader
	authz     *certs.Authorizer // nil unless --tls-client-ca
	server    *proxy.Server
	addrs     []string
	listeners []*acl.Listener
}

// newGateway checks the whole configuration, loads certificates, and binds
// every listener. Any configuration problem is returned (as configError)
// before anything listens.
func newGateway(cfg *serveConfig, log *zap.Logger) (*gateway, error) {
	if err := cfg.validate(); err != nil {
		return nil, configError{err}
	}
	g := &gateway{cfg: cfg, log: log, cancels: proxy.NewCancelRegistry(), metrics: newPromMetrics(),
		upstream: proxy.NewUpstreamLimiter(cfg.MaxUpstreamStartups)}
	jail, err := newJail(cfg, log, g.metrics.OnBan)
	if err != nil {
		return nil, err
	}
	g.jail = jail
	g.metrics.SetBanStore(jail)
	if g.cancel, err = newCancelLimiter(cfg, jail); err != nil {
		_ = jail.Close()
		return nil, configError{err}
	}
	if cfg.Admin != "" {
		g.admin, err = newAdminServer(cfg.Admin, adminDeps{Bans: jail, Ready: g.ready, Registry: g.metrics.Registry()}, log)
		if err != nil {
			_ = jail.Close()
			return nil, err
		}
	}
	var errs []error
	for _, rc := range cfg.routes() {
		r, err := g.buildRoute(rc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		g.routes = append(g.routes, r)
	}
	if err := errors.Join(errs...); err != nil {
		_ = jail.Close()
		return nil, configError{err}
	}
	if err := g.listen(); err != nil {
		g.closeListeners()
		_ = jail.Close()
		return nil, err
	}
	if g.admin != nil {
		if err := g.admin.Start(); err != nil {
			g.closeListeners()
			_ = jail.Close()
			return nil, err
		}
		log.Info("admin endpoint listening", zap.Stringer("address", g.admin.Addr()))
	}
	return g, nil
}

// buildRoute turns a route's settings into its run-time parts, without
// binding anything yet.
func (g *gateway) buildRoute(rc routeConfig) (*route, error) {
	prefix := ""
	if len(g.cfg.Routes) > 0 {
		prefix = "route " + rc.Name + ": "
	}
	wrap := func(err error) error { return fmt.Errorf("%s%w", prefix, err) }
	r := &route{cfg: rc}
	// Collect every problem of the route before giving up, so one run of
	// the command shows the operator everything to fix.
	var errs []error
	var err error
	if r.allow, err = acl.ParseAllowlist(rc.Allow); err != nil {
		errs = append(errs, wrap(err))
	}
	if r.upstream, err = parseUpstream(rc.Upstream, rc.AllowRemoteUpstream); err != nil {
		errs = append(errs, wrap(err))
	}
	for _, spec := range rc.Listen {
		addrs, err := resolveListen(spec)
		if err != nil {
			errs = append(errs, wrap(err))
			continue
		}
		r.addrs = append(r.addrs, addrs...)
	}
	minVersion := rc.TLSMinVersion
	if minVersion == "" {
		minVersion = "1.2"
	}
	policy := certs.Policy{
		ClientCAFile: rc.TLSClientCA,
		AllowCN:      rc.TLSAllowCN,
		AllowSAN:     rc.TLSAllowSAN,
		MapUser:      rc.TLSMapUser,
		MapFile:      rc.TLSMapFile,
	}
	policy.ClientCRLFile = rc.TLSClientCRL
	if policy.MinVersion, err = certs.ParseMinVersion(minVersion); err != nil {
		errs = append(errs, wrap(err))
	}
	if r.loader, err = certs.NewLoader(rc.TLSCert, rc.TLSKey, g.log.With(zap.String("route", rc.Name))); err != nil {
		errs = append(errs, wrap(err))
	}
	if r.authz, err = certs.NewAuthorizer(policy, g.log.With(zap.String("route", rc.Name))); err != nil {
		errs = append(errs, wrap(err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	tlsConfig, err := certs.ServerConfig(r.loader, policy)
	if err != nil {
		return nil, wrap(err)
	}
	pcfg := proxy.Config{
		Name:             rc.Name,
		Upstream:         r.upstream,
		TLS:              tlsConfig,
		Logger:           g.log,
		Cancels:          g.cancels,
		Metrics:          g.metrics,
		Observer:         g.metrics,
		AuthGate:         authGate{jail: g.jail},
		UpstreamLimiter:  g.upstream,
		HandshakeTimeout: g.cfg.HandshakeTimeout,
		AuthTimeout:      g.cfg.AuthTimeout,
		AuthStepTimeout:  g.cfg.AuthStepTimeout,
		MaxStartups:      g.cfg.MaxStartups,
		MaxStartupsPerIP: g.cfg.MaxStartupsPerIP,
		CancelLimiter:    g.cancel,
	}
	pcfg.PlaintextCancel, _ = parsePlaintextCancel(rc.CancelPlaintext) // checked by validate
	pcfg.Relay, _ = parseRelayMode(g.cfg.Relay)                        // checked by validate
	if r.authz != nil {
		pcfg.Authorizer = r.authz
	}
	r.server, err = proxy.New(pcfg)
	if err != nil {
		return nil, wrap(err)
	}
	return r, nil
}

// listen binds every route's addresses and wraps each in the accept-time
// policy.
func (g *gateway) listen() error {
	for _, r := range g.routes {
		if r.allow.AllowsAny() {
			g.log.Warn("allowlist admits every address: this gateway is open to the whole internet; narrow --allow",
				zap.String("route", r.cfg.Name), zap.Stringer("allow", r.allow))
		}
		for _, addr := range r.addrs {
			inner, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", addr, err)
			}
			ln, err := acl.NewListener(inner, acl.ListenerConfig{
				Allowlist: r.allow,
				Banned:    g.jail.Banned,
				OnReject:  g.metrics.OnReject,
				Logger:    g.log.With(zap.String("route", r.cfg.Name)),
			})
			if err != nil {
				_ = inner.Close()
				return fmt.Errorf("--listen %s: %w", addr, err)
			}
			r.listeners = append(r.listeners, ln)
			g.log.Info("listening", zap.String("route", r.cfg.Name), zap.Stringer("address", ln.Addr()),
				zap.Stringer("upstream", r.upstream), zap.Stringer("allow", r.allow))
		}
	}
	return nil
}

func (g *gateway) closeListeners() {
	for _, r := range g.routes {
		for _, ln := range r.listeners {
			_ = ln.Close()
		}
	}
}

// run serves until ctx is done, then drains: listeners close at once, and
// sessions in flight get --drain-timeout to finish before they are closed.
func (g *gateway) run(ctx context.Context) error {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	for _, r := range g.routes {
		wg.Add(2)
		go func() {
			defer wg.Done()
			r.loader.RunExpiryChecks(watchCtx, certs.DefaultExpiryWarning)
		}()
		go func() {
			defer wg.Done()
			if err := r.loader.Watch(watchCtx); err != nil && !errors.Is(err, context.Canceled) {
				g.log.Warn("watching certificate files failed; reload with SIGHUP", zap.String("route", r.cfg.Name), zap.Error(err))
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.authz.Watch(watchCtx); err != nil {
				g.log.Warn("watching the certificate revocation list failed; reload with SIGHUP", zap.String("route", r.cfg.Name), zap.Error(err))
			}
		}()
		for _, ln := range r.listeners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := r.server.Serve(ln); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
					select {
					case serveErr <- fmt.Errorf("serving %s: %w", ln.Addr(), err):
					default:
					}
				}
			}()
		}
	}
	g.log.Info("pgwarden started", zap.String("version", buildVersion()))

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	g.draining.Store(true) // /readyz says 503 from now on
	g.log.Info("shutting down: listeners closed, draining sessions", zap.Duration("drain_timeout", g.cfg.DrainTimeout))
	dctx, cancel := context.WithTimeout(context.Background(), g.cfg.DrainTimeout)
	defer cancel()
	var drain sync.WaitGroup
	for _, r := range g.routes {
		drain.Add(1)
		go func() {
			defer drain.Done()
			if err := r.server.Shutdown(dctx); err != nil {
				g.log.Warn("drain timeout passed; remaining sessions closed", zap.String("route", r.cfg.Name))
			}
		}()
	}
	drain.Wait()
	stopWatch()
	wg.Wait()
	if g.admin != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = g.admin.Shutdown(sctx)
		scancel()
	}
	if cerr := g.jail.Close(); cerr != nil {
		g.log.Error("closing the ban state", zap.Error(cerr))
	}
	g.log.Info("pgwarden stopped")
	return err
}

// errHelp is returned when --help was asked for (usage already printed).
var errHelp = errors.New("help requested")
