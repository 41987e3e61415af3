package gateway

import (
	"context"
	"errors"
	"fmt"
	"go.uber.org/zap"
	"net"
	"time"

	bolt "go.etcd.io/bbolt"

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
		err := r.upstreamAccepts()
		g.metrics.UpstreamDialed(r.cfg.Name, err == nil)
		if err != nil {
			return fmt.Errorf("route %s: upstream %s: %w", r.cfg.Name, r.upstream, err)
		}
	}
	return nil
}

// upstreamAccepts connects to the route's upstream and closes at once.
func (r *route) upstreamAccepts() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := r.upstream.Dial(ctx)
	if err != nil {
		return err
	}
	return c.Close()
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
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]RouteInfo, 0, len(g.routes))
	for _, r := range g.routes {
		ri := RouteInfo{Name: r.cfg.Name, Upstream: r.upstream, Allow: r.policy.Allowlist(), ClientCA: r.tls.authz != nil}
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

// StateDB is the ban state file (BanState), open while the gateway runs,
// for other state kept beside the bans; nil without one (see acl.Jail.DB).
func (g *Gateway) StateDB() *bolt.DB { return g.jail.DB() }

// Alive returns nil when every accept loop and every event loop of the
// gateway answer before ctx ends, each from its own goroutine (see
// proxy.Server.Alive): the systemd watchdog's question.
func (g *Gateway) Alive(ctx context.Context) error {
	for _, r := range g.routes {
		if err := r.server.Alive(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Status is a one-line summary for a supervisor (systemd's STATUS=):
// connections being handled and active bans.
func (g *Gateway) Status() string {
	sessions := 0
	for _, r := range g.routes {
		sessions += r.server.Sessions()
	}
	return fmt.Sprintf("%d sessions, %d bans", sessions, g.jail.ActiveBans())
}

// MetricsAddr is the read-only endpoint's bound address, nil without one.
func (g *Gateway) MetricsAddr() net.Addr {
	if g.public == nil {
		return nil
	}
	return g.public.Addr()
}

// logSelf logs the own addresses the jail ignores.
func (g *Gateway) logSelf(msg string) {
	g.log.Info(msg+" ("+g.opts.Names.Of(FieldBanIgnoreSelf)+")", zap.Stringers("addresses", g.self))
}
