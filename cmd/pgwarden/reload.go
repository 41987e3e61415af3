package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
)

// ready is /readyz: the listeners are up, no drain has begun, and every
// route's upstream accepts a connection. The probe connects and closes
// without sending a byte, which postgres deliberately does not log as an
// error (backend_startup.c: "service-monitoring software often just opens
// and closes a connection").
func (g *gateway) ready() error {
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

// reload is SIGHUP: certificates and client CAs are re-read, and so are the
// allowlists (from the command line and config file); a broken replacement
// is refused and the previous one keeps serving. Listen addresses and
// upstreams are start-time only.
func (g *gateway) reload() {
	g.log.Info("SIGHUP: reloading certificates and allowlists")
	g.reloadAllowlists()
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
// allowlist atomically in its listeners.
func (g *gateway) reloadAllowlists() {
	if g.args == nil {
		return
	}
	cfg, err := parseServeArgs(g.args)
	if err != nil {
		g.log.Error("allowlist reload failed; keeping the current ones", zap.Error(err))
		return
	}
	fresh := map[string][]string{}
	for _, rc := range cfg.routes() {
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
		for _, ln := range r.listeners {
			ln.SetAllowlist(allow)
		}
		if allow.String() != r.allow.String() {
			g.log.Info("allowlist reloaded", zap.String("route", r.cfg.Name), zap.Stringer("allow", allow))
		}
		r.allow = allow
	}
}
