package gateway

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/crowdsec"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/fleet"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
)

// Running with other gateways: the clients to build before the jail (the
// jail shares its state through one of them), their goroutines, and what
// the admission policy asks of them.

// buildSeveral builds the CrowdSec bouncer and the Redis store, when
// configured, and registers their metrics. Neither contacts its server:
// one that is down at start is an outage like any other.
func (g *Gateway) buildSeveral() error {
	c := g.cfg
	var errs []error
	if c.CrowdSecLAPI != "" {
		b, err := crowdsec.New(crowdsec.Config{URL: c.CrowdSecLAPI, KeyFile: c.CrowdSecKeyFile, Interval: c.CrowdSecInterval,
			Logger: g.log.With(zap.String("component", "crowdsec"))})
		if err != nil {
			errs = append(errs, libraryConfigError(err, crowdsec.ErrConfig, map[string]fielderr.Field{
				"URL": FieldCrowdSecLAPI, "KeyFile": FieldCrowdSecKeyFile, "Interval": FieldCrowdSecInterval}))
		} else {
			g.crowdsec = b
			g.metrics.EnableCrowdSec(b.Up, b.Decisions)
		}
	}
	if c.CrowdSecMachineCredentials != "" {
		if err := g.buildAlerts(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Redis != "" {
		s, err := fleet.New(fleet.Config{URL: c.Redis, Prefix: c.RedisPrefix, HistoryTTL: historyTTL(c),
			TombstoneTTL: max(fleet.DefaultTombstoneTTL, c.BanMaxTime), Logger: g.log.With(zap.String("component", "fleet"))})
		if err != nil {
			errs = append(errs, libraryConfigError(err, fleet.ErrConfig, map[string]fielderr.Field{
				"URL": FieldRedis, "Prefix": FieldRedisPrefix}))
		} else {
			g.fleet = s
			g.shared = newFleetShared(s, g.log.With(zap.String("component", "fleet")))
			g.grantSync = newGrantSync(s, g.log.With(zap.String("component", "fleet")))
			g.metrics.EnableRedis(s.Up)
		}
	}
	balancers := len(g.cfg.GrantProxyProtocolFrom) > 0 && g.cfg.GrantListen != ""
	for _, r := range g.cfg.AllRoutes() {
		balancers = balancers || len(r.ProxyProtocolFrom) > 0
	}
	if balancers {
		g.metrics.EnableProxyProtocol(proxyproto.Reasons())
	}
	return errors.Join(errs...)
}

// buildAlerts builds the pusher of the jail's bans to CrowdSec. The
// credentials file's url is the LAPI it pushes to; with CrowdSecLAPI too,
// both must name the same LAPI (a bouncer of one LAPI feeding another is
// almost surely a mistake, and pushing to the LAPI pgwarden pulls from is
// what makes an unban here lift the decision pgwarden itself obeys).
func (g *Gateway) buildAlerts() error {
	c := g.cfg
	mc, err := crowdsec.ReadMachineCredentials(c.CrowdSecMachineCredentials)
	if err != nil {
		return libraryConfigError(err, crowdsec.ErrConfig, map[string]fielderr.Field{
			"MachineCredentials": FieldCrowdSecMachineCredentials})
	}
	if c.CrowdSecLAPI != "" && !crowdsec.SameURL(mc.URL, c.CrowdSecLAPI) {
		return errorf("%s: its url %s is not %s %s; make them name the same LAPI (bans are pushed to the LAPI decisions are pulled from)",
			FieldCrowdSecMachineCredentials, mc.URL, FieldCrowdSecLAPI, c.CrowdSecLAPI)
	}
	p, err := crowdsec.NewPusher(crowdsec.PusherConfig{Credentials: mc, CredentialsFile: c.CrowdSecMachineCredentials,
		Logger: g.log.With(zap.String("component", "crowdsec-alerts"))})
	if err != nil {
		return libraryConfigError(err, crowdsec.ErrConfig, map[string]fielderr.Field{
			"MachineCredentials": FieldCrowdSecMachineCredentials})
	}
	g.alerts = p
	g.metrics.EnableCrowdSecAlerts(p.Pushed, p.Failed, p.Dropped)
	return nil
}

// historyTTL is the jail's ban history TTL for these settings, which the
// fleet's history keys keep too.
func historyTTL(c *Config) time.Duration {
	jc := acl.JailConfig{MaxTime: c.BanMaxTime}
	_ = jc.CheckAndSetDefaults() // only the default is read
	return jc.HistoryTTL
}

// jailHooks sets the jail's Shared store (the fleet's, or none) and, with
// CrowdSec machine credentials, has its own bans and unbans pushed. Only
// the jail's own: a ban applied from the fleet was pushed by the gateway
// that made it, and CrowdSec's decisions never enter the jail (they are a
// separate denier), so nothing pushed comes back as a new ban.
func (g *Gateway) jailHooks(jc *acl.JailConfig) {
	if g.shared != nil {
		jc.Shared = g.shared
	}
	if g.alerts != nil {
		jc.OnLocalBan = func(key netip.Prefix, at, until time.Time, failures int, manual bool) {
			g.alerts.Ban(key, at, until, failures, manual)
		}
		jc.OnLocalUnban = g.alerts.Unban
	}
}

// deniers are the admission policy's deny sources, in the order they are
// asked: the jail, then CrowdSec's decisions.
func (g *Gateway) deniers() []acl.Denier {
	d := []acl.Denier{g.jail}
	if g.crowdsec != nil {
		d = append(d, crowdsecDenier{g.crowdsec})
	}
	return d
}

// crowdsecDenier refuses the sources a CrowdSec decision bans.
type crowdsecDenier struct{ b *crowdsec.Bouncer }

func (c crowdsecDenier) Deny(ip netip.Addr) (acl.Decision, bool) {
	return acl.RejectCrowdSec, c.b.Banned(ip)
}

// proxyProtocolTimeout is c's ProxyProtocolTimeout or its default.
func proxyProtocolTimeout(c *Config) time.Duration {
	if c.ProxyProtocolTimeout > 0 {
		return c.ProxyProtocolTimeout
	}
	return DefaultProxyProtocolTimeout
}

// runSeveral starts the CrowdSec puller and pusher and the fleet watcher
// on ctx.
func (g *Gateway) runSeveral(ctx context.Context, wg *sync.WaitGroup) {
	if g.crowdsec != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = g.crowdsec.Run(ctx)
		}()
	}
	if g.alerts != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = g.alerts.Run(ctx)
		}()
	}
	if g.fleet != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.watchFleet(ctx)
		}()
	}
}

// closeSeveral closes the Redis client; the bouncer holds nothing open.
func (g *Gateway) closeSeveral() {
	if g.fleet != nil {
		if err := g.fleet.Close(); err != nil {
			g.log.Warn("closing the redis client", zap.Error(err))
		}
	}
}
