package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/banpolicy"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
	"github.com/pgwarden/pgwarden/proxy"
)

// route is one listen → upstream service at run time.
type route struct {
	cfg       RouteConfig
	upstream  proxy.Upstream
	policy    *acl.Policy // the route's admission: its allowlist, then the jail and CrowdSec
	gate      *acl.Gate   // applies policy at accept, and to clients named by a trusted balancer
	trusted   *proxyproto.Trusted
	loader    *certs.Loader
	authz     *certs.Authorizer // nil without a client CA
	tls       *tls.Config       // the route's TLS (its loader's certificate)
	server    *proxy.Server
	addrs     []string
	listeners []*acl.Listener
}

// buildRoute turns a route's settings into its run-time parts, without
// binding anything yet.
func (g *Gateway) buildRoute(rc RouteConfig) (*route, error) {
	prefix := g.cfg.routePrefix(rc)
	wrap := func(err error) error { return prefixEach(prefix, err) }
	r := &route{cfg: rc}
	// Collect every problem of the route before giving up, so one run of
	// the command shows the operator everything to fix.
	var errs []error
	allow, err := acl.ParseAllowlist(rc.Allow)
	if err != nil {
		errs = append(errs, wrap(err))
	} else if r.policy, err = acl.NewPolicy(allow, []acl.Allower{grantAllower{g.grants, rc.Name}}, g.deniers()); err != nil {
		errs = append(errs, wrap(err))
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
	minVersion := rc.TLSMinVersion
	if minVersion == "" {
		minVersion = defaultMinVersion
	}
	policy := certs.Policy{
		ClientCAFile:  rc.TLSClientCA,
		AllowCN:       rc.TLSAllowCN,
		AllowSAN:      rc.TLSAllowSAN,
		MapUser:       rc.TLSMapUser,
		MapFile:       rc.TLSMapFile,
		ClientCRLFile: rc.TLSClientCRL,
	}
	if policy.MinVersion, err = certs.ParseMinVersion(minVersion); err != nil {
		errs = append(errs, wrap(err))
	}
	log := g.log.With(zap.String("route", rc.Name))
	r.gate = acl.NewGate(r.policy, g.onReject(rc.Name), log)
	if r.loader, err = certs.NewLoader(rc.TLSCert, rc.TLSKey, log); err != nil {
		errs = append(errs, wrap(err))
	}
	if r.authz, err = certs.NewAuthorizer(policy, log); err != nil {
		errs = append(errs, wrap(err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	tlsConfig, err := certs.ServerConfig(r.loader, policy)
	if err != nil {
		return nil, wrap(err)
	}
	r.tls = tlsConfig
	pcfg := proxy.Config{
		Name:             rc.Name,
		Upstream:         r.upstream,
		TLS:              tlsConfig,
		Logger:           g.log,
		Cancels:          g.cancels,
		Metrics:          g.metrics,
		Observer:         g.metrics,
		AuthGate:         banpolicy.Gate{Jail: g.jail},
		UpstreamLimiter:  g.upstream,
		HandshakeTimeout: g.cfg.HandshakeTimeout,
		AuthTimeout:      g.cfg.AuthTimeout,
		AuthStepTimeout:  g.cfg.AuthStepTimeout,
		MaxStartups:      g.cfg.MaxStartups,
		MaxStartupsPerIP: g.cfg.MaxStartupsPerIP,
		CancelLimiter:    g.cancel,
		StartupPolicy:    grantLimits{g.grants, rc.Name, r.policy},
	}
	pcfg.PlaintextCancel, _ = parsePlaintextCancel(rc.CancelPlaintext) // checked by Validate
	pcfg.Relay, _ = parseRelayMode(g.cfg.Relay)                        // checked by Validate
	if r.authz != nil {
		pcfg.Authorizer = r.authz
	}
	if r.trusted != nil {
		pcfg.Sources = &balancerSources{trusted: r.trusted, timeout: g.proxyProtocolTimeout(), gate: r.gate,
			onHeaderError: g.metrics.ProxyHeaderFailed}
	}
	r.server, err = proxy.New(pcfg)
	if err != nil {
		return nil, wrap(err)
	}
	return r, nil
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
			inner, err := g.opts.Listen(addr)
			if err != nil {
				return errorf("%s %s: %w", FieldListen, addr, err)
			}
			lcfg := acl.ListenerConfig{Gate: r.gate}
			if r.trusted != nil {
				// The balancers' connections are judged by the client
				// their header names, in the connection's goroutine.
				lcfg.Defer = r.trusted.ContainsAddr
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
	return nil
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
