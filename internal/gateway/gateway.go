package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/banpolicy"
	"github.com/pgwarden/pgwarden/internal/crowdsec"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/fleet"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/metrics"
	"github.com/pgwarden/pgwarden/internal/netaddr"
	"github.com/pgwarden/pgwarden/internal/rulehits"
	"github.com/pgwarden/pgwarden/proxy"
)

// Hooks follow the gateway's lifecycle; each may be nil. They run on the
// gateway's goroutines and must not block.
type Hooks struct {
	// Ready: every listener is bound and serving (systemd READY=1).
	Ready func()
	// Reloading and Reloaded bracket a Reload (systemd RELOADING=1, then
	// READY=1).
	Reloading, Reloaded func()
	// Stopping: the listeners are closed and sessions drain (systemd
	// STOPPING=1).
	Stopping func()
}

// Options are how the gateway is wired, beyond its Config.
type Options struct {
	// Logger receives everything; nil means none.
	Logger *zap.Logger
	// Version is logged at start.
	Version string
	// Reread returns the configuration as it is now, for Reload to take
	// the allowlists from (the command line re-reads its file); nil keeps
	// them.
	Reread func() (*Config, error)
	// Listen opens a listening socket for a route's address; nil means
	// net.Listen("tcp", addr). A supervisor that passes sockets in
	// (systemd socket activation) returns those.
	Listen func(addr string) (net.Listener, error)
	// Inherited returns the listening sockets a supervisor passed in under
	// name ("" for all of them), for a listen address "systemd:NAME"
	// (systemd socket activation); nil means there are none.
	Inherited func(name string) ([]net.Listener, error)
	// Hooks follow the lifecycle.
	Hooks Hooks
	// Names are the caller's names of the configuration fields, for the
	// gateway's own log messages (errors carry fields and are rendered by
	// the caller).
	Names fielderr.Names

	// ownAddrs reads the host's own addresses (BanIgnoreSelf); nil means
	// netaddr.LocalAddrs. Tests replace it.
	ownAddrs func() ([]netip.Addr, error)
}

// Gateway is a running `pgwarden serve`.
type Gateway struct {
	cfg      *Config
	opts     Options
	log      *zap.Logger
	routes   []*route
	cancels  *proxy.CancelRegistry
	upstream *proxy.UpstreamLimiter // shared: routes to one postgres share its cap
	metrics  *metrics.Prometheus
	jail     *acl.Jail
	hits     *rulehits.Counter // connections admitted per route and rule
	admin    *admin.Server     // nil without an admin address
	public   *admin.Server     // the read-only endpoint; nil without MetricsListen
	draining atomic.Bool
	// refusals sums up the accept-time refusals of every route at info.
	refusals *acl.RefusalLog

	// banIgnore is BanIgnore as parsed; with BanIgnoreSelf the jail
	// ignores it plus self, the host's own addresses (reload.go).
	banIgnore *acl.Allowlist
	selfMu    sync.Mutex
	self      []netip.Addr

	// mu serialises reloads and guards what they replace: applied, and
	// each route's reloadable parts; watchCtx and watchWG are Run's, for
	// the watches of files a reload adds (nil outside Run).
	mu           sync.Mutex
	applied      *Config
	drainTimeout atomic.Int64 // DrainTimeout in force
	ppTimeout    atomic.Int64 // ProxyProtocolTimeout in force, or its default
	watchCtx     context.Context
	watchWG      *sync.WaitGroup

	fleet     *fleet.Store      // nil without Redis
	shared    *fleetShared      // the jail's view of fleet
	grantSync *grantSync        // the grants' view of fleet; nil without Redis
	crowdsec  *crowdsec.Bouncer // nil without a CrowdSec LAPI
	alerts    *crowdsec.Pusher  // nil without CrowdSec machine credentials

	// grants are the access grants (grants.go); grantAPI is their
	// self-service endpoint, nil without GrantListen. servers are the
	// routes' proxy servers once built, for ending a grant's sessions.
	grants           *grants.Registry
	grantAPI         *grantEndpoint
	servers          atomic.Pointer[[]*proxy.Server]
	grantEndSessions atomic.Bool // GrantEndSessions in force

	// cancel rate-limits cancel requests; shared, so that a source has one
	// budget whichever route it reaches.
	cancel *proxy.CancelLimiter
}

// New checks the whole configuration, loads certificates, opens the ban
// state and binds every listener: Build, then Listen. Every configuration
// problem is returned (as a *ConfigError) before anything listens.
func New(cfg *Config, opts Options) (*Gateway, error) {
	g, err := Build(cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := g.Listen(); err != nil {
		_ = g.Close()
		return nil, err
	}
	return g, nil
}

// Build checks the whole configuration, loads certificates and opens the
// ban state, binding nothing: what a configuration check needs (see
// Routes). Every configuration problem is returned, as a *ConfigError.
// Close releases what Build took, unless Run does.
func Build(cfg *Config, opts Options) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, configError(err)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Listen == nil {
		opts.Listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	if opts.ownAddrs == nil {
		opts.ownAddrs = netaddr.LocalAddrs
	}
	log := opts.Logger
	g := &Gateway{cfg: cfg, opts: opts, log: log, cancels: proxy.NewCancelRegistry(), metrics: metrics.New(),
		upstream: proxy.NewUpstreamLimiter(cfg.MaxUpstreamStartups),
		refusals: acl.NewRefusalLog(acl.RefusalLogConfig{}, log), applied: cfg.clone()}
	g.drainTimeout.Store(int64(cfg.DrainTimeout))
	g.grantEndSessions.Store(cfg.GrantEndSessions)
	g.ppTimeout.Store(int64(proxyProtocolTimeout(cfg)))
	// A problem with the CrowdSec or Redis settings is reported with the
	// routes' problems, all at once.
	var errs []error
	if err := g.buildSeveral(); err != nil {
		errs = append(errs, err)
	}
	var err error
	if g.banIgnore, err = acl.ParseList(acl.FieldIgnore, cfg.BanIgnore); err != nil {
		g.closeSeveral()
		return nil, configError(err)
	}
	logWarnings(log, g.banIgnore)
	if cfg.BanIgnoreSelf {
		if g.self, err = opts.ownAddrs(); err != nil {
			g.closeSeveral()
			return nil, err
		}
		g.logSelf("the host's own addresses are never banned")
	}
	jail, err := newJail(cfg, g.banIgnore.WithAddrs(g.self), log, g.metrics.OnBan, g.jailHooks)
	if err != nil {
		g.closeSeveral()
		return nil, err
	}
	g.jail = jail
	g.metrics.SetBanStore(jail)
	if g.hits, err = rulehits.New(rulehits.Config{DB: jail.DB(), Logger: log.With(zap.String("component", "rulehits"))}); err != nil {
		_ = jail.Close()
		return nil, err
	}
	g.metrics.Registry().MustRegister(g.hits.Collector())
	if g.cancel, err = newCancelLimiter(cfg, jail); err != nil {
		_ = g.closeState()
		return nil, configError(err)
	}
	if err := g.newGrants(); err != nil {
		_ = g.closeState()
		return nil, err
	}
	if cfg.MetricsListen != "" {
		g.public, err = admin.NewMetrics(admin.MetricsConfig{Addr: cfg.MetricsListen, Ready: g.Ready, Registry: g.metrics.Registry(), Logger: log})
		if err != nil {
			_ = g.closeState()
			return nil, configError(err)
		}
	}
	var servers []*proxy.Server
	var routeNames []string
	for _, rc := range cfg.AllRoutes() {
		routeNames = append(routeNames, rc.Name)
		g.metrics.AddRoute(rc.Name)
		r, err := g.buildRoute(rc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		g.routes = append(g.routes, r)
		servers = append(servers, r.server)
	}
	if len(errs) == 0 {
		errs = append(errs, g.buildGrantEndpoint())
	}
	if cfg.Admin != "" {
		g.admin, err = admin.New(admin.Config{Addr: cfg.Admin, Bans: jail, Ready: g.Ready, Registry: g.metrics.Registry(),
			Grants: adminGrants{g.grants, routeNames}, Rules: g.hits.List, Logger: log})
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		_ = g.closeState()
		return nil, configError(err)
	}
	g.servers.Store(&servers)
	for _, r := range g.routes {
		g.metrics.CertificateExpiry(r.cfg.Name, func() time.Time { return r.cert.Load().Current().Leaf.NotAfter })
	}
	return g, nil
}

// Listen binds every route's listeners and the grant endpoint, and starts
// the admin endpoint.
func (g *Gateway) Listen() error {
	if err := g.listen(); err != nil {
		g.closeListeners()
		return err
	}
	if err := g.listenGrants(); err != nil {
		g.closeListeners()
		return err
	}
	if g.admin != nil {
		// admin.Start logs "admin endpoint listening" itself.
		if err := g.admin.Start(); err != nil {
			g.closeListeners()
			return err
		}
	}
	if g.public != nil {
		if err := g.public.Start(); err != nil {
			g.closeListeners()
			g.shutdownEndpoints()
			return err
		}
	}
	return nil
}

// Close releases what Build took (listeners, the grants, the ban state,
// the Redis client) for a gateway that will not Run.
func (g *Gateway) Close() error {
	g.closeListeners()
	return g.closeState()
}

// closeState closes the grant registry, then the ban jail, whose state
// file the registry writes to, then the clients the jail used.
func (g *Gateway) closeState() error {
	if g.grants != nil {
		_ = g.grants.Close()
	}
	err := g.jail.Close()
	g.closeSeveral()
	return err
}

// jailConfig is the jail's configuration from the Ban* settings, ignoring
// the sources in ignore, checked (a reload checks the new one this way
// before putting it in force).
func jailConfig(c *Config, ignore *acl.Allowlist, log *zap.Logger, onBan func(ip netip.Addr, until time.Time)) (acl.JailConfig, error) {
	jcfg := acl.DefaultJailConfig()
	jcfg.MaxRetry = c.BanMaxRetry
	jcfg.FindTime = c.BanFindTime
	jcfg.BanTime = c.BanTime
	jcfg.TimeFactor = c.BanTimeFactor
	jcfg.MaxTime = c.BanMaxTime
	jcfg.Ignore = ignore
	jcfg.IPv6Prefix = c.BanIPv6Prefix
	jcfg.MaxTracked = c.BanMaxTracked
	jcfg.StatePath = c.BanState
	jcfg.Logger = log.With(zap.String("component", "jail"))
	jcfg.OnBan = onBan
	if err := jcfg.CheckAndSetDefaults(); err != nil {
		return acl.JailConfig{}, err
	}
	return jcfg, nil
}

// newJail builds the ban jail from the Ban* settings, ignoring the sources
// in ignore, with the hooks (its Shared store, its ban announcements) that
// hooks sets for the jail's settings. Problems with them are ConfigErrors; a
// state file locked by another process is a runtime error.
func newJail(c *Config, ignore *acl.Allowlist, log *zap.Logger, onBan func(ip netip.Addr, until time.Time), hooks func(*acl.JailConfig)) (*acl.Jail, error) {
	jcfg, err := jailConfig(c, ignore, log, onBan)
	if err != nil {
		return nil, configError(err)
	}
	hooks(&jcfg)
	j, err := acl.NewJail(jcfg)
	if err != nil {
		if errors.Is(err, acl.ErrStateLocked) {
			return nil, err
		}
		return nil, configError(err)
	}
	return j, nil
}

// newCancelLimiter builds the process's one cancel limiter (shared by the
// routes, so a source has one budget), whose unknown-key guesses count in
// the jail (banpolicy.CancelGuesses).
func newCancelLimiter(c *Config, jail *acl.Jail) (*proxy.CancelLimiter, error) {
	l := proxy.DefaultCancelLimits()
	l.Rate = c.CancelRate
	l.Burst = c.CancelBurst
	l.UnknownPerFailure = c.CancelUnknownPerFailure
	l.OnGuesses = banpolicy.CancelGuesses(jail)
	return proxy.NewCancelLimiter(l)
}

// Run serves until ctx is done, then drains: listeners close at once, and
// sessions in flight get DrainTimeout to finish before they are closed.
func (g *Gateway) Run(ctx context.Context) error {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.hits.Run(watchCtx) // flushes once more when the drain is over
	}()
	g.mu.Lock()
	g.watchCtx, g.watchWG = watchCtx, &wg
	for _, r := range g.routes {
		g.watch(watchCtx, r, &wg)
	}
	g.mu.Unlock()
	g.runSeveral(watchCtx, &wg)
	for _, r := range g.routes {
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
	g.runGrants(watchCtx, &wg)
	g.log.Info("pgwarden started", zap.String("version", g.opts.Version))
	call(g.opts.Hooks.Ready)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	g.draining.Store(true) // /readyz says 503 from now on
	call(g.opts.Hooks.Stopping)
	g.shutdownGrants()
	drainTimeout := time.Duration(g.drainTimeout.Load())
	g.log.Info("shutting down: listeners closed, draining sessions", zap.Duration("drain_timeout", drainTimeout))
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
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
	g.mu.Lock()
	g.watchCtx = nil // a reload from now on starts no watch
	g.mu.Unlock()
	stopWatch()
	wg.Wait()
	g.shutdownEndpoints()
	g.refusals.Close()
	if cerr := g.closeState(); cerr != nil {
		g.log.Error("closing the ban state", zap.Error(cerr))
	}
	g.log.Info("pgwarden stopped")
	return err
}

// shutdownEndpoints stops the admin and metrics endpoints (each a no-op if
// absent or never started).
func (g *Gateway) shutdownEndpoints() {
	for _, s := range []*admin.Server{g.admin, g.public} {
		if s != nil {
			sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = s.Shutdown(sctx)
			scancel()
		}
	}
}

// call runs a hook if it is set.
func call(hook func()) {
	if hook != nil {
		hook()
	}
}
