package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/netaddr"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
	"github.com/pgwarden/pgwarden/proxy"
)

// Access grants at run time.
//
// One registry serves every route. At accept, each route's admission
// policy asks it after the allowlist (grantAllower), so a granted source
// passes the same gate, and the same ban check, as an allowlisted one. At
// startup, a source the allowlist does not cover is held to its grant's
// user and database limits before postgres is dialed (grantLimits), and
// its session is tagged with the grant's id, so that revoking the grant
// (or its expiry, with GrantEndSessions) ends the sessions it admitted.
// Grants live in the ban state file, beside the bans.

// validateGrants checks the grant settings without touching files or the
// network.
func (c *Config) validateGrants() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, errorf(format, a...)) }
	if c.GrantMaxTTL != 0 && c.GrantMaxTTL < grants.MinTTL {
		add("%s %s: want a duration of at least %s, e.g. 12h", FieldGrantMaxTTL, c.GrantMaxTTL, grants.MinTTL)
	}
	if (c.GrantTLSCert == "") != (c.GrantTLSKey == "") {
		add("%s and %s go together: give both, or neither to use the first route's certificate", FieldGrantTLSCert, FieldGrantTLSKey)
	}
	if c.GrantListen == "" {
		if c.GrantTLSCert != "" || c.GrantTLSKey != "" {
			add("%s and %s are for the grant endpoint: add %s HOST:PORT, or drop them", FieldGrantTLSCert, FieldGrantTLSKey, FieldGrantListen)
		}
		if len(c.GrantProxyProtocolFrom) > 0 {
			add("%s names the load balancers in front of the grant endpoint: add %s HOST:PORT, or drop it", FieldGrantProxyProtocolFrom, FieldGrantListen)
		}
		return errors.Join(errs...)
	}
	if host, port, err := net.SplitHostPort(c.GrantListen); err != nil || host == "" {
		add("%s %q: want HOST:PORT, e.g. %s 0.0.0.0:8443", FieldGrantListen, c.GrantListen, FieldGrantListen)
	} else if _, err := netaddr.Port(port, 0); err != nil {
		add("%s %q: %w", FieldGrantListen, c.GrantListen, err)
	}
	if c.OIDC.Issuer == "" {
		add("%s needs the token issuer: add %s URL (e.g. https://token.actions.githubusercontent.com)", FieldGrantListen, oidcauth.FieldIssuer)
	}
	if c.OIDC.Audience == "" {
		add("%s needs the token audience: add %s AUD (what CI jobs ask their tokens for)", FieldGrantListen, oidcauth.FieldAudience)
	}
	if len(c.OIDC.Rules) == 0 {
		add("%s needs rules saying which tokens get a grant: add %s.rules to the configuration file", FieldGrantListen, FieldOIDC)
	} else if _, err := oidcauth.CompileRules(c.OIDC.Rules); err != nil {
		add("%s.%w", FieldOIDC, err)
	}
	if c.GrantTLSCert == "" {
		if routes := c.AllRoutes(); len(routes) == 0 || routes[0].TLSCert == "" || routes[0].TLSKey == "" {
			add("%s needs TLS (the requests carry bearer tokens): give the first route %s and %s, or %s and %s",
				FieldGrantListen, certs.FieldCert, certs.FieldKey, FieldGrantTLSCert, FieldGrantTLSKey)
		}
	}
	routes := map[string]bool{}
	for _, r := range c.AllRoutes() {
		routes[r.Name] = true
	}
	for i, r := range c.OIDC.Rules {
		if r.Route != "" && !routes[r.Route] {
			add("%s.rules[%d].route: no route is named %q", FieldOIDC, i, r.Route)
		}
	}
	return errors.Join(errs...)
}

// grantAllower admits, at accept, the sources an active grant of its route
// covers (an acl.Allower after the route's allowlist).
type grantAllower struct {
	reg   *grants.Registry
	route string
}

func (a grantAllower) Match(ip netip.Addr) (acl.Rule, bool) {
	g, ok := a.reg.Covering(a.route, ip)
	if !ok {
		return acl.Rule{}, false
	}
	return acl.Rule{Source: "grant", Prefix: g.Source, ID: g.ID}, true
}

// errNoLongerAdmitted refuses a startup whose source was admitted at
// accept but is covered by nothing now: its grant ended in between (or a
// reload narrowed the allowlist).
var errNoLongerAdmitted = errors.New("this address is no longer admitted: its access grant has ended")

// grantLimits is a route's proxy.StartupPolicy: a source the route's
// allowlist covers is not limited; any other needs a grant that permits
// the user and database, and its session is tagged with the grant's id.
type grantLimits struct {
	reg    *grants.Registry
	route  string
	policy *acl.Policy
}

func (l grantLimits) AdmitStartup(remote netip.Addr, user, database string) (string, error) {
	if _, ok := l.policy.Allowlist().Match(remote); ok {
		return "", nil
	}
	g, err := l.reg.Admits(l.route, remote, user, database)
	if err != nil {
		var np *grants.NotPermittedError
		if errors.As(err, &np) {
			return "", np // names the rule that made the grant, never its id
		}
		return "", errNoLongerAdmitted
	}
	l.reg.MarkUsed(g, remote)
	return g.ID, nil
}

// grantEndpoint is the self-service endpoint (GrantListen).
type grantEndpoint struct {
	server *grantapi.Server
	// The token issuer and the rules in force: a reload replaces them.
	verifier atomic.Pointer[oidcauth.Verifier]
	rules    atomic.Pointer[oidcauth.Rules]
	loader   *certs.Loader // its own certificate; nil with the first route's
	// balancers are the load balancers in front of it (nil: none); a
	// reload replaces them.
	balancers atomic.Pointer[proxyproto.Trusted]
	ln        net.Listener
	served    chan error
}

// Verify verifies with the issuer in force (grantapi.TokenVerifier).
func (ep *grantEndpoint) Verify(ctx context.Context, raw string) (*oidcauth.Token, error) {
	return ep.verifier.Load().Verify(ctx, raw)
}

// Match matches with the rules in force (grantapi.RuleMatcher).
func (ep *grantEndpoint) Match(claims map[string]any) (*oidcauth.Match, bool) {
	return ep.rules.Load().Match(claims)
}

// newOIDC builds the endpoint's verifier and rules from c's OIDC settings.
func (g *Gateway) newOIDC(c *Config) (*oidcauth.Verifier, *oidcauth.Rules, error) {
	rules, err := oidcauth.CompileRules(c.OIDC.Rules)
	if err != nil {
		return nil, nil, errorf("%s.%w", FieldOIDC, err) // checked by Validate
	}
	for _, w := range rules.Warnings() {
		g.log.Warn("grant rule pins no immutable id", zap.String("rule", w))
	}
	verifier, err := oidcauth.NewVerifier(oidcauth.Config{
		Issuer: c.OIDC.Issuer, Audience: c.OIDC.Audience, JWKS: c.OIDC.JWKS,
		Logger: g.log.With(zap.String("component", "oidc")),
	})
	return verifier, rules, err
}

// newGrants builds the registry, in the ban state file when there is one.
// It runs before the routes, whose policies consult it.
func (g *Gateway) newGrants() error {
	cfg := grants.Config{
		MaxTTL: g.cfg.GrantMaxTTL,
		Logger: g.log.With(zap.String("component", "grants")),
		OnExpire: func(gr grants.Grant) {
			if g.grantEndSessions.Load() {
				g.endGrantSessions(gr, "expired")
			}
		},
		OnRevoke: func(gr grants.Grant, keep bool) {
			if !keep {
				g.endGrantSessions(gr, "revoked")
			}
		},
		OnChange: func(c grants.Change) {
			g.metrics.OnGrantChange(c)
			g.grantSync.onChange(c) // shared with the fleet (fleet_grants.go)
		},
	}
	if db := g.jail.DB(); db != nil {
		store, err := grants.NewBoltStore(db)
		if err != nil {
			return err
		}
		cfg.Store = store
	}
	reg, err := grants.New(cfg)
	if err != nil {
		return err
	}
	g.grants = reg
	if g.grantSync != nil {
		g.grantSync.reg = reg
	}
	g.metrics.SetGrantStore(reg)
	return nil
}

// endGrantSessions ends, on every route, the sessions gr admitted.
func (g *Gateway) endGrantSessions(gr grants.Grant, why string) {
	servers := g.servers.Load()
	if servers == nil {
		return // a grant ended while the gateway was being built: no session yet
	}
	n := 0
	for _, s := range *servers {
		n += s.EndSessions(gr.ID)
	}
	if n > 0 {
		g.log.Info("sessions ended with their access grant", zap.String("grant_id", gr.ID),
			zap.String("source", grants.SourceString(gr.Source)), zap.String("why", why), zap.Int("sessions", n))
	}
}

// buildGrantEndpoint checks the OIDC settings and builds the endpoint,
// binding nothing. It runs after the routes: by default the endpoint
// serves the first route's certificate (through its loader, so renewals
// apply), which clients verify with the same CA.
func (g *Gateway) buildGrantEndpoint() error {
	c := g.cfg
	if c.GrantListen == "" {
		if c.OIDC.set() {
			g.log.Warn("the OIDC settings are unused without " + g.opts.Names.Of(FieldGrantListen))
		}
		return nil
	}
	ep := &grantEndpoint{}
	var errs []error
	verifier, rules, err := g.newOIDC(c)
	if rules == nil {
		return err
	}
	errs = append(errs, err)
	ep.verifier.Store(verifier)
	ep.rules.Store(rules)
	balancers, err := g.grantBalancers(c)
	errs = append(errs, err)
	ep.balancers.Store(balancers)
	// The first route's certificate, whichever loader a reload gives it.
	first := g.routes[0]
	tlsConfig := first.tls.config.Clone()
	tlsConfig.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return first.cert.Load().GetCertificate(hello)
	}
	if c.GrantTLSCert != "" {
		var tlsErr error
		if ep.loader, tlsErr = certs.NewLoader(c.GrantTLSCert, c.GrantTLSKey, g.log.With(zap.String("component", "grant_endpoint"))); tlsErr != nil {
			// The loader names the route's fields; these are the endpoint's.
			tlsErr = fielderr.Rename(tlsErr, fielderr.Names{
				certs.FieldCert: g.opts.Names.Of(FieldGrantTLSCert),
				certs.FieldKey:  g.opts.Names.Of(FieldGrantTLSKey),
			})
		} else {
			tlsConfig, tlsErr = certs.ServerConfig(ep.loader, certs.Policy{MinVersion: tls.VersionTLS12})
		}
		errs = append(errs, tlsErr)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	h, err := grantapi.NewHandler(grantapi.Config{
		Verifier:   ep,
		Rules:      ep,
		Grants:     g.grants,
		Banned:     g.jail.Banned,
		AuthFailed: g.grantTokenRefused,
		OnOutcome:  g.metrics.OnGrantRequest,
		Logger:     g.log.With(zap.String("component", "grant_endpoint")),
	})
	if err != nil {
		return err
	}
	scfg := grantapi.ServerConfig{Handler: h, TLS: tlsConfig, Logger: g.log}
	if ep.balancers.Load() != nil {
		scfg.Balancers = ep.balancers.Load
		scfg.ProxyHeaderTimeout = func() time.Duration { return time.Duration(g.ppTimeout.Load()) }
		scfg.OnProxyHeaderError = g.metrics.ProxyHeaderFailed
	}
	if ep.server, err = grantapi.NewServer(scfg); err != nil {
		return err
	}
	g.grantAPI = ep
	return nil
}

// grantBalancers parses c's GrantProxyProtocolFrom, naming it in errors
// and warnings.
func (g *Gateway) grantBalancers(c *Config) (*proxyproto.Trusted, error) {
	t, err := proxyproto.ParseTrustedAs(FieldGrantProxyProtocolFrom, c.GrantProxyProtocolFrom)
	if err != nil {
		return nil, err
	}
	for _, w := range t.Warnings() {
		g.log.Warn(strings.ReplaceAll(w, FieldGrantProxyProtocolFrom.Name, g.opts.Names.Of(FieldGrantProxyProtocolFrom)))
	}
	return t, nil
}

// grantTokenRefused counts a refused token (a 401) as a failed login of
// its source: guessing tokens leads to a ban like guessing passwords.
func (g *Gateway) grantTokenRefused(ip netip.Addr) {
	g.jail.Failed(ip, acl.Failure{Reason: "grant_token_refused"})
}

// listenGrants binds the grant endpoint.
func (g *Gateway) listenGrants() error {
	ep := g.grantAPI
	if ep == nil {
		return nil
	}
	ln, err := net.Listen("tcp", g.cfg.GrantListen)
	if err != nil {
		return errorf("%s %s: %w", FieldGrantListen, g.cfg.GrantListen, err)
	}
	ep.ln = ln
	g.log.Info("grant endpoint listening", zap.Stringer("address", ln.Addr()), zap.String("path", grantapi.Path),
		zap.String("issuer", g.cfg.OIDC.Issuer), zap.String("audience", g.cfg.OIDC.Audience))
	return nil
}

// runGrants serves the endpoint and watches its own certificate until
// ctx ends; wg tracks the goroutines it starts.
func (g *Gateway) runGrants(ctx context.Context, wg *sync.WaitGroup) {
	ep := g.grantAPI
	if ep == nil || ep.ln == nil {
		return
	}
	ep.served = make(chan error, 1)
	go func() { ep.served <- ep.server.Serve(ep.ln) }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// A remote key set is fetched now, so a wrong URL shows at start
		// rather than at the first CI job; a failure is not fatal (the
		// issuer may be back by then).
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := ep.verifier.Load().Prefetch(pctx); err != nil && ctx.Err() == nil {
			g.log.Warn("fetching the OIDC key set failed; grant requests get 503 until it succeeds",
				zap.String("jwks", g.cfg.OIDC.JWKS), zap.String("issuer", g.cfg.OIDC.Issuer), zap.Error(err))
		}
	}()
	if ep.loader != nil {
		wg.Add(2)
		go func() {
			defer wg.Done()
			ep.loader.RunExpiryChecks(ctx, certs.DefaultExpiryWarning)
		}()
		go func() {
			defer wg.Done()
			if err := ep.loader.Watch(ctx); err != nil && !errors.Is(err, context.Canceled) {
				g.log.Warn("watching the grant endpoint's certificate files failed; reload with SIGHUP", zap.Error(err))
			}
		}()
	}
}

// shutdownGrants stops the endpoint: requests in flight get a moment,
// new ones are refused.
func (g *Gateway) shutdownGrants() {
	ep := g.grantAPI
	if ep == nil || ep.served == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = ep.server.Shutdown(ctx)
	if err := <-ep.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		g.log.Warn("grant endpoint stopped", zap.Error(err))
	}
}

// closeGrantListener releases a bound but never served endpoint.
func (g *Gateway) closeGrantListener() {
	if ep := g.grantAPI; ep != nil && ep.ln != nil && ep.served == nil {
		_ = ep.ln.Close()
	}
}

// grantPlan is what a reload puts in force for the grants.
type grantPlan struct {
	maxTTL      time.Duration
	endSessions bool
	verifier    *oidcauth.Verifier // nil: unchanged
	rules       *oidcauth.Rules
	balancers   *proxyproto.Trusted
	// balancersNeedRestart: the balancers were added or all removed.
	balancersNeedRestart bool
	commits              []func()
}

// prepareGrants checks and builds the grant settings of cfg for a reload:
// the longest grant, ending sessions with their grant, the endpoint's
// token issuer and rules (built anew when they changed), and its own
// certificate files (re-read). Its address and certificate paths wait for
// a restart.
func (g *Gateway) prepareGrants(cfg *Config) (grantPlan, error) {
	p := grantPlan{maxTTL: cfg.GrantMaxTTL, endSessions: cfg.GrantEndSessions}
	ep := g.grantAPI
	if ep == nil {
		return p, nil
	}
	var errs []error
	if !reflect.DeepEqual(cfg.OIDC, g.applied.OIDC) && cfg.GrantListen != "" {
		verifier, rules, err := g.newOIDC(cfg)
		errs = append(errs, err)
		p.verifier, p.rules = verifier, rules
	}
	balancers, err := g.grantBalancers(cfg)
	switch {
	case err != nil:
		errs = append(errs, err)
	case (balancers == nil) != (ep.balancers.Load() == nil):
		// As for the routes' balancers: turning PROXY protocol on or off
		// waits for a restart (the caller moves the setting to the
		// restart list).
		p.balancers, p.balancersNeedRestart = ep.balancers.Load(), true
	default:
		p.balancers = balancers
	}
	if ep.loader != nil {
		commit, err := ep.loader.Stage()
		if err != nil {
			errs = append(errs, fielderr.Rename(err, fielderr.Names{
				certs.FieldCert: g.opts.Names.Of(FieldGrantTLSCert),
				certs.FieldKey:  g.opts.Names.Of(FieldGrantTLSKey),
			}))
		} else {
			p.commits = append(p.commits, commit)
		}
	}
	return p, errors.Join(errs...)
}

// commitGrants puts a prepared grant plan in force.
func (g *Gateway) commitGrants(p grantPlan) {
	if err := g.grants.SetMaxTTL(p.maxTTL); err != nil {
		g.log.Error("grant max TTL not reloaded", zap.Error(err)) // checked by Validate
	}
	g.grantEndSessions.Store(p.endSessions)
	for _, commit := range p.commits {
		commit()
	}
	if ep := g.grantAPI; ep != nil {
		ep.balancers.Store(p.balancers)
		if p.verifier != nil {
			ep.verifier.Store(p.verifier)
			ep.rules.Store(p.rules)
		}
	}
}

// adminGrants is the registry as the admin endpoint sees it: a grant for a
// route that does not exist is refused rather than never matching.
type adminGrants struct {
	*grants.Registry
	routes []string
}

func (a adminGrants) Add(req grants.AddRequest) (grants.AddResult, error) {
	if req.Route != "" && !slices.Contains(a.routes, req.Route) {
		return grants.AddResult{}, fmt.Errorf("%w: no route is named %q (routes: %s)", grants.ErrBadRequest, req.Route, strings.Join(a.routes, ", "))
	}
	return a.Registry.Add(req)
}

var _ admin.GrantStore = adminGrants{}

// GrantEndpointAddr is the grant endpoint's bound address, nil without one.
func (g *Gateway) GrantEndpointAddr() net.Addr {
	if g.grantAPI == nil || g.grantAPI.ln == nil {
		return nil
	}
	return g.grantAPI.ln.Addr()
}

// Grants is the access grant registry.
func (g *Gateway) Grants() *grants.Registry { return g.grants }

var _ proxy.StartupPolicy = grantLimits{}
