package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/banpolicy"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
	"github.com/pgwarden/pgwarden/internal/rulehits"
	"github.com/pgwarden/pgwarden/proxy"
)

// route is one listen → upstream service at run time. The fields a
// reload replaces (cfg's reloadable settings, loader, authz, policy) are
// guarded by Gateway.mu.
type route struct {
	name      string // cfg.Name, which no reload changes, for readers outside Gateway.mu
	cfg       RouteConfig
	upstream  proxy.Upstream
	policy    *acl.Policy         // the route's admission: its allowlist, then the jail and CrowdSec
	gate      *acl.Gate           // applies policy at accept, and to clients named by a trusted balancer
	trusted   *proxyproto.Trusted // the balancers at start; sources has those in force
	sources   *balancerSources    // nil without trusted balancers at start
	hits      *rulehits.Route     // what each of its rules admitted
	tls       tlsParts
	cert      atomic.Pointer[certs.Loader] // tls.loader, for readers outside Gateway.mu
	server    *proxy.Server
	addrs     []string
	listeners []*acl.Listener
	stopWatch func() // stops the watches of tls's files; nil before Run
}

// tlsParts are a route's server certificate, client-certificate rules and
// the TLS configuration built from them.
type tlsParts struct {
	loader *certs.Loader
	authz  *certs.Authorizer // nil without a client CA
	policy certs.Policy
	config *tls.Config
}

// authorizer is authz as the proxy takes it: a nil interface without a
// client CA (a typed nil would look like one to the proxy).
func (t tlsParts) authorizer() proxy.Authorizer {
	if t.authz == nil {
		return nil
	}
	return t.authz
}

// tlsPolicy is a route's TLS policy from its settings.
func tlsPolicy(rc RouteConfig) (certs.Policy, error) {
	minVersion := rc.TLSMinVersion
	if minVersion == "" {
		minVersion = defaultMinVersion
	}
	p := certs.Policy{
		ClientCAFile:  rc.TLSClientCA,
		AllowCN:       rc.TLSAllowCN,
		AllowSAN:      rc.TLSAllowSAN,
		MapUser:       rc.TLSMapUser,
		MapFile:       rc.TLSMapFile,
		ClientCRLFile: rc.TLSClientCRL,
	}
	var err error
	p.MinVersion, err = certs.ParseMinVersion(minVersion)
	return p, err
}

// tunables are the proxy settings of route rc under c that a reload may
// change.
func tunables(c *Config, rc RouteConfig, t tlsParts) proxy.Tunables {
	tun := proxy.Tunables{
		TLS:              t.config,
		Authorizer:       t.authorizer(),
		HandshakeTimeout: c.HandshakeTimeout,
		AuthTimeout:      c.AuthTimeout,
		AuthStepTimeout:  c.AuthStepTimeout,
		MaxStartups:      c.MaxStartups,
		MaxStartupsPerIP: c.MaxStartupsPerIP,
	}
	tun.PlaintextCancel, _ = parsePlaintextCancel(rc.CancelPlaintext) // checked by Validate
	return tun
}

// buildRoute turns a route's settings into its run-time parts, without
// binding anything yet.
func (g *Gateway) buildRoute(rc RouteConfig) (*route, error) {
	prefix := g.cfg.routePrefix(rc)
	wrap := func(err error) error { return prefixEach(prefix, err) }
	r := &route{name: rc.Name, cfg: rc}
	// Collect every problem of the route before giving up, so one run of
	// the command shows the operator everything to fix.
	var errs []error
	allow, err := acl.ParseAllowlist(rc.Allow)
	if err != nil {
		errs = append(errs, wrap(err))
	} else if r.policy, err = acl.NewPolicy(allow, []acl.Allower{grantAllower{g.grants, rc.Name}}, g.deniers()); err != nil {
		errs = append(errs, wrap(err))
	} else {
		r.hits = g.hits.Route(rc.Name)
		r.hits.SetAllowlist(allow)
	}
	if r.trusted, err = proxyproto.ParseTrusted(rc.ProxyProtocolFrom); err != nil {
		errs = append(errs, wrap(err))
	}
	logWarnings(g.log.With(zap.String("route", rc.Name)), allow)
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
	if r.tls.policy, err = tlsPolicy(rc); err != nil {
		errs = append(errs, wrap(err))
	}
	log := g.log.With(zap.String("route", rc.Name))
	r.gate = acl.NewGate(r.policy, g.onReject(rc.Name), log)
	if r.hits != nil {
		r.gate.OnAdmit(r.hits.Hit)
	}
	if r.tls.loader, err = certs.NewLoader(rc.TLSCert, rc.TLSKey, log); err != nil {
		errs = append(errs, wrap(err))
	}
	if r.tls.authz, err = certs.NewAuthorizer(r.tls.policy, log); err != nil {
		errs = append(errs, wrap(err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if r.tls.config, err = certs.ServerConfig(r.tls.loader, r.tls.policy); err != nil {
		return nil, wrap(err)
	}
	r.cert.Store(r.tls.loader)
	tun := tunables(g.cfg, rc, r.tls)
	pcfg := proxy.Config{
		Name:             rc.Name,
		Upstream:         r.upstream,
		TLS:              tun.TLS,
		Authorizer:       tun.Authorizer,
		Logger:           g.log,
		Cancels:          g.cancels,
		Metrics:          g.metrics,
		Observer:         g.metrics,
		AuthGate:         banpolicy.Gate{Jail: g.jail},
		UpstreamLimiter:  g.upstream,
		HandshakeTimeout: tun.HandshakeTimeout,
		AuthTimeout:      tun.AuthTimeout,
		AuthStepTimeout:  tun.AuthStepTimeout,
		MaxStartups:      tun.MaxStartups,
		MaxStartupsPerIP: tun.MaxStartupsPerIP,
		PlaintextCancel:  tun.PlaintextCancel,
		CancelLimiter:    g.cancel,
		StartupPolicy:    grantLimits{g.grants, rc.Name, r.policy},
	}
	pcfg.Relay, _ = parseRelayMode(g.cfg.Relay) // checked by Validate
	if r.trusted != nil {
		r.sources = &balancerSources{timeout: &g.ppTimeout, gate: r.gate, onHeaderError: g.metrics.ProxyHeaderFailed}
		r.sources.trusted.Store(r.trusted)
		pcfg.Sources = r.sources
	}
	r.server, err = proxy.New(pcfg)
	if err != nil {
		return nil, wrap(err)
	}
	g.endRevokedOnReload(r, r.tls.authz)
	return r, nil
}

// endRevokedOnReload makes each reload of authz (a CRL file change,
// SIGHUP) end the route's sessions whose client certificate it now
// revokes: revoking a leaked certificate must also cut off whoever is
// already connected with it, not only refuse the next login.
func (g *Gateway) endRevokedOnReload(r *route, authz *certs.Authorizer) {
	authz.SetOnReload(func() { g.endRevoked(r, authz) })
}

// endRevoked ends r's sessions whose client certificate authz revokes. It
// runs from a file watch as well as from a reload, so it reads only what
// a reload never replaces: the route's name and proxy server.
func (g *Gateway) endRevoked(r *route, authz *certs.Authorizer) {
	if authz == nil {
		return
	}
	if n := r.server.EndRevokedSessions(authz.Revoked); n > 0 {
		g.log.Info("sessions ended: their client certificate is revoked", zap.String("route", r.name), zap.Int("sessions", n))
	}
}

// watch starts watching the files of the route's TLS parts (certificate,
// CRL) and the certificate's expiry, until ctx ends or stopWatch is
// called; wg counts the goroutines. The caller holds g.mu.
func (g *Gateway) watch(ctx context.Context, r *route, wg *sync.WaitGroup) {
	ctx, cancel := context.WithCancel(ctx)
	r.stopWatch = cancel
	t := r.tls
	wg.Add(3)
	go func() {
		defer wg.Done()
		t.loader.RunExpiryChecks(ctx, certs.DefaultExpiryWarning)
	}()
	go func() {
		defer wg.Done()
		if err := t.loader.Watch(ctx); err != nil && !errors.Is(err, context.Canceled) {
			g.log.Warn("watching certificate files failed; reload with SIGHUP", zap.String("route", r.cfg.Name), zap.Error(err))
		}
	}()
	go func() {
		defer wg.Done()
		if err := t.authz.Watch(ctx); err != nil {
			g.log.Warn("watching the certificate revocation list failed; reload with SIGHUP", zap.String("route", r.cfg.Name), zap.Error(err))
		}
	}()
}

// logWarnings logs what parsing a list noticed but accepted (an entry with
// host bits set, ::/0 without 0.0.0.0/0), each naming its flag.
func logWarnings(log *zap.Logger, list *acl.Allowlist) {
	for _, w := range list.WarningErrors() {
		log.Warn("configuration warning", zap.Error(w))
	}
}

// joinType is the type errors.Join returns, to tell a list of problems
// (one line each) from an error that merely wraps several causes.
var joinType = reflect.TypeOf(errors.Join(errors.New("")))

// prefixEach puts prefix (the route's name) before every problem in err:
// before each error errors.Join joined into it, else before err itself.
func prefixEach(prefix string, err error) error {
	if prefix == "" || err == nil {
		return err
	}
	if reflect.TypeOf(err) == joinType {
		parts := err.(interface{ Unwrap() []error }).Unwrap()
		out := make([]error, len(parts))
		for i, p := range parts {
			out[i] = prefixEach(prefix, p)
		}
		return errors.Join(out...)
	}
	return fmt.Errorf("%s%w", prefix, err)
}

// listen binds every route's addresses, each behind the route's admission
// gate.
func (g *Gateway) listen() error {
	for _, r := range g.routes {
		allow := r.policy.Allowlist()
		for _, w := range r.trusted.Warnings() {
			g.log.Warn(strings.ReplaceAll(w, proxyproto.FieldTrusted.Name, g.opts.Names.Of(proxyproto.FieldTrusted)),
				zap.String("route", r.cfg.Name))
		}
		if allow.AllowsAny() {
			g.log.Warn("allowlist admits every address: this gateway is open to the whole internet; narrow "+g.opts.Names.Of(acl.FieldAllow),
				zap.String("route", r.cfg.Name), zap.Stringer("allow", allow))
		}
		for _, addr := range r.addrs {
			inners, err := g.bind(addr)
			if err != nil {
				return errorf("%s %s: %w", FieldListen, addr, err)
			}
			for _, inner := range inners {
				lcfg := acl.ListenerConfig{Gate: r.gate}
				if r.trusted != nil {
					// The balancers' connections are judged by the client
					// their header names, in the connection's goroutine.
					lcfg.Defer = func(ip netip.Addr) bool { return r.sources.trusted.Load().ContainsAddr(ip) }
				}
				ln, err := acl.NewListener(inner, lcfg)
				if err != nil {
					_ = inner.Close()
					return errorf("%s %s: %w", FieldListen, addr, err)
				}
				r.listeners = append(r.listeners, ln)
				fields := []zap.Field{zap.String("route", r.cfg.Name), zap.Stringer("address", ln.Addr()),
					zap.Stringer("upstream", r.upstream), zap.Stringer("allow", allow)}
				if r.trusted != nil {
					fields = append(fields, zap.Stringer("proxy_protocol_from", r.trusted))
				}
				g.log.Info("listening", fields...)
			}
		}
	}
	return nil
}

// bind opens the listening sockets of one resolved listen address: one
// socket, or those a supervisor passed in for "systemd:NAME".
func (g *Gateway) bind(addr string) ([]net.Listener, error) {
	name, inherited := strings.CutPrefix(addr, InheritedPrefix)
	if !inherited {
		ln, err := g.opts.Listen(addr)
		if err != nil {
			return nil, err
		}
		return []net.Listener{ln}, nil
	}
	if g.opts.Inherited == nil {
		return nil, errors.New("no sockets were passed in: this address needs systemd socket activation (a .socket unit)")
	}
	return g.opts.Inherited(name)
}

// onReject is told of each of route's accept-time refusals: counted in
// pgwarden_rejections_total and summed up in the info log.
func (g *Gateway) onReject(route string) func(acl.Decision, netip.Addr) {
	count, note := g.metrics.OnReject(route), g.refusals.OnReject(route)
	return func(d acl.Decision, ip netip.Addr) {
		count(d, ip)
		note(d, ip)
	}
}

func (g *Gateway) closeListeners() {
	for _, r := range g.routes {
		for _, ln := range r.listeners {
			_ = ln.Close()
		}
	}
	g.closeGrantListener()
}
