package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// Ready is /readyz: the listeners are up, no drain has begun, and every
// route's upstream accepts a connection. The probe connects and closes
// without sending a byte, which postgres deliberately does not log as an
// error (backend_startup.c: "service-monitoring software often just opens
// and closes a connection").
func (g *Gateway) Ready() error {
	if g.draining.Load() {
		return errors.New("draining: shutting down")
	}
	for _, r := range g.routes {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := r.upstream.Dial(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("route %s: upstream %s: %w", r.cfg.Name, r.upstream, err)
		}
		_ = c.Close()
	}
	return nil
}

// Reload (SIGHUP) re-reads the certificates and client CAs, and the
// allowlists (from Options.Reread); a broken replacement is refused and
// the previous one keeps serving. Listen addresses and upstreams are
// start-time only.
func (g *Gateway) Reload() {
	call(g.opts.Hooks.Reloading)
	defer call(g.opts.Hooks.Reloaded)
	g.log.Info("SIGHUP: reloading certificates and allowlists")
	g.reloadAllowlists()
	g.reloadGrants()
	g.reloadSelf()
	for _, r := range g.routes {
		if err := r.loader.Reload(); err != nil {
			g.log.Error("certificate reload failed; still serving the previous pair", zap.String("route", r.cfg.Name), zap.Error(err))
		}
		if r.authz != nil {
			if err := r.authz.Reload(); err != nil {
				g.log.Error("client CA reload failed; still using the previous one", zap.String("route", r.cfg.Name), zap.Error(err))
			}
		}
	}
}

// reloadAllowlists re-reads the configuration and swaps each route's
// allowlist atomically in its admission policy.
func (g *Gateway) reloadAllowlists() {
	if g.opts.Reread == nil {
		return
	}
	cfg, err := g.opts.Reread()
	if err != nil {
		g.log.Error("allowlist reload failed; keeping the current ones", zap.Error(err))
		return
	}
	fresh := map[string][]string{}
	for _, rc := range cfg.AllRoutes() {
		fresh[rc.Name] = rc.Allow
	}
	for _, r := range g.routes {
		entries, ok := fresh[r.cfg.Name]
		if !ok {
			g.log.Warn("route no longer in the configuration; restart to remove it", zap.String("route", r.cfg.Name))
			continue
		}
		allow, err := acl.ParseAllowlist(entries)
		if err != nil {
			g.log.Error("allowlist reload failed; keeping the current one", zap.String("route", r.cfg.Name), zap.Error(err))
			continue
		}
		old := r.policy.Allowlist()
		r.policy.SetAllowlist(allow)
		if allow.String() != old.String() {
			g.log.Info("allowlist reloaded", zap.String("route", r.cfg.Name), zap.Stringer("allow", allow))
			logWarnings(g.log.With(zap.String("route", r.cfg.Name)), allow)
		}
	}
}

// reloadSelf re-reads the host's own addresses (BanIgnoreSelf), which
// change as interfaces come and go, and swaps them into the jail's
// ignore list.
func (g *Gateway) reloadSelf() {
	if !g.cfg.BanIgnoreSelf {
		return
	}
	self, err := g.opts.ownAddrs()
	if err != nil {
		g.log.Error("re-reading the host's own addresses failed; still ignoring the previous ones", zap.Error(err))
		return
	}
	g.selfMu.Lock()
	defer g.selfMu.Unlock()
	if slices.Equal(self, g.self) {
		return
	}
	g.self = self
	g.jail.SetIgnore(g.banIgnore.WithAddrs(self))
	g.logSelf("the host's own addresses changed; they are never banned")
}

// logSelf logs the own addresses the jail ignores.
func (g *Gateway) logSelf(msg string) {
	g.log.Info(msg+" ("+g.opts.Names.Of(FieldBanIgnoreSelf)+")", zap.Stringers("addresses", g.self))
}

// RouteInfo describes one route as it runs.
type RouteInfo struct {
	Name      string
	Listeners []net.Addr // the bound addresses
	Upstream  proxy.Upstream
	Allow     *acl.Allowlist // in force now
	ClientCA  bool           // client certificates are required
}

// Routes describes the routes, in configuration order.
func (g *Gateway) Routes() []RouteInfo {
	out := make([]RouteInfo, 0, len(g.routes))
	for _, r := range g.routes {
		ri := RouteInfo{Name: r.cfg.Name, Upstream: r.upstream, Allow: r.policy.Allowlist(), ClientCA: r.authz != nil}
		for _, ln := range r.listeners {
			ri.Listeners = append(ri.Listeners, ln.Addr())
		}
		out = append(out, ri)
	}
	return out
}

// AdminAddr is the admin endpoint's bound address, nil without one.
func (g *Gateway) AdminAddr() net.Addr {
	if g.admin == nil {
		return nil
	}
	return g.admin.Addr()
}

// MetricsAddr is the read-only endpoint's bound address, nil without one.
func (g *Gateway) MetricsAddr() net.Addr {
	if g.public == nil {
		return nil
	}
	return g.public.Addr()
}

// StateDB is the ban state file (BanState), open while the gateway runs,
// for other state kept beside the bans; nil without one (see acl.Jail.DB).
func (g *Gateway) StateDB() *bolt.DB { return g.jail.DB() }
