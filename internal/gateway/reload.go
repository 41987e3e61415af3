package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
	"github.com/pgwarden/pgwarden/proxy"
)

// A reload (SIGHUP) puts a whole new configuration in force, or none of it.
//
// Reload re-reads the configuration (Options.Reread) and prepares every part
// that may change without rebinding a socket, without touching what runs:
// allowlists, certificate and key (re-read, or new files), client CA, map
// file and CRL, TLS minimum version, client-certificate rules, cancel
// policy, timeouts, startup caps, the upstream startup cap, ban settings and
// ignore list, cancel limits, drain timeout. If any part fails, nothing
// changes and the log names every problem; otherwise everything is put in
// force at once and the log names each setting that changed. Settings that
// need a new socket or a new process (listen addresses, upstreams, routes
// added or removed, the admin address, the state file, the relay) are
// reported as needing a restart and keep their running values. A setting
// this file does not know (added to Config later) counts as needing a
// restart, never as silently applied.

// setting says how a reload treats a Config or RouteConfig field: its name
// for the log and whether a reload puts it in force.
type setting struct {
	field  fielderr.Field
	reload bool
}

var configSettings = map[string]setting{
	"HandshakeTimeout":           {FieldHandshakeTimeout, true},
	"AuthTimeout":                {FieldAuthTimeout, true},
	"AuthStepTimeout":            {FieldAuthStepTimeout, true},
	"DrainTimeout":               {FieldDrainTimeout, true},
	"MaxStartups":                {FieldMaxStartups, true},
	"MaxStartupsPerIP":           {FieldMaxStartupsPerIP, true},
	"MaxUpstreamStartups":        {FieldMaxUpstreamStartups, true},
	"BanMaxRetry":                {acl.FieldMaxRetry, true},
	"BanFindTime":                {acl.FieldFindTime, true},
	"BanTime":                    {acl.FieldBanTime, true},
	"BanTimeFactor":              {acl.FieldTimeFactor, true},
	"BanMaxTime":                 {acl.FieldMaxTime, true},
	"BanIgnore":                  {acl.FieldIgnore, true},
	"BanIPv6Prefix":              {acl.FieldIPv6Prefix, true},
	"BanMaxTracked":              {acl.FieldMaxTracked, true},
	"BanState":                   {FieldBanState, false},
	"Admin":                      {admin.FieldAddr, false},
	"CancelRate":                 {FieldCancelRate, true},
	"CancelBurst":                {FieldCancelBurst, true},
	"CancelUnknownPerFailure":    {FieldCancelUnknownPerFailure, true},
	"Relay":                      {FieldRelay, false},
	"BanIgnoreSelf":              {FieldBanIgnoreSelf, true},
	"ProxyProtocolTimeout":       {FieldProxyProtocolTimeout, true},
	"Redis":                      {FieldRedis, false},
	"RedisPrefix":                {FieldRedisPrefix, false},
	"CrowdSecLAPI":               {FieldCrowdSecLAPI, false},
	"CrowdSecKeyFile":            {FieldCrowdSecKeyFile, false},
	"CrowdSecInterval":           {FieldCrowdSecInterval, false},
	"CrowdSecMachineCredentials": {FieldCrowdSecMachineCredentials, false},
	"MetricsListen":              {admin.FieldMetricsAddr, false},
	"GrantMaxTTL":                {FieldGrantMaxTTL, true},
	"GrantEndSessions":           {FieldGrantEndSessions, true},
	"GrantListen":                {FieldGrantListen, false},
	"GrantTLSCert":               {FieldGrantTLSCert, false},
	"GrantTLSKey":                {FieldGrantTLSKey, false},
	"GrantProxyProtocolFrom":     {FieldGrantProxyProtocolFrom, true},
	"OIDC":                       {FieldOIDC, true},
}

var routeSettings = map[string]setting{
	"Listen":              {FieldListen, false},
	"Upstream":            {FieldUpstream, false},
	"AllowRemoteUpstream": {FieldAllowRemoteUpstream, false},
	"Allow":               {acl.FieldAllow, true},
	"TLSCert":             {certs.FieldCert, true},
	"TLSKey":              {certs.FieldKey, true},
	"TLSMinVersion":       {certs.FieldMinVersion, true},
	"TLSClientCA":         {certs.FieldClientCA, true},
	"TLSAllowCN":          {certs.FieldAllowCN, true},
	"TLSAllowSAN":         {certs.FieldAllowSAN, true},
	"TLSMapUser":          {certs.FieldMapUser, true},
	"TLSMapFile":          {certs.FieldMapFile, true},
	"TLSClientCRL":        {certs.FieldClientCRL, true},
	"CancelPlaintext":     {FieldCancelPlaintext, true},
	// Reloaded while the route has balancers before and after; adding the
	// first or removing the last needs a restart (prepareRoute).
	"ProxyProtocolFrom": {proxyproto.FieldTrusted, true},
}

// diff compares two structs of the same type field by field (an empty list
// equals a nil one), skipping skip, and names the fields that differ: those
// a reload applies, and the others.
func (g *Gateway) diff(old, next any, table map[string]setting, prefix string, skip ...string) (applied, restart []string) {
	ov, nv := reflect.ValueOf(old), reflect.ValueOf(next)
	t := ov.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if slices.Contains(skip, f.Name) || equalSetting(ov.Field(i), nv.Field(i)) {
			continue
		}
		s, known := table[f.Name]
		name := f.Name
		if known {
			name = g.opts.Names.Of(s.field)
		}
		if known && s.reload {
			applied = append(applied, prefix+name)
		} else {
			restart = append(restart, prefix+name)
		}
	}
	return applied, restart
}

func equalSetting(a, b reflect.Value) bool {
	if a.Kind() == reflect.Slice && a.Len() == 0 && b.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// clone is a deep copy of c (its lists are not shared).
func (c *Config) clone() *Config {
	out := *c
	out.Route = c.Route.clone()
	out.Routes = make([]RouteConfig, len(c.Routes))
	for i, r := range c.Routes {
		out.Routes[i] = r.clone()
	}
	out.BanIgnore = slices.Clone(c.BanIgnore)
	return &out
}

func (r RouteConfig) clone() RouteConfig {
	r.Listen = slices.Clone(r.Listen)
	r.Allow = slices.Clone(r.Allow)
	r.TLSAllowCN = slices.Clone(r.TLSAllowCN)
	r.TLSAllowSAN = slices.Clone(r.TLSAllowSAN)
	r.TLSMapUser = slices.Clone(r.TLSMapUser)
	return r
}

// routePlan is what a reload will put in force for one running route.
type routePlan struct {
	r       *route
	cfg     RouteConfig // the route's settings from now on
	allow   *acl.Allowlist
	trusted *proxyproto.Trusted // the balancers from now on, when r has some
	tls     tlsParts
	commits []func() // staged re-reads of the files in force
	tun     proxy.Tunables
}

// reloadPlan is a whole reload, checked and ready to commit.
type reloadPlan struct {
	cfg       *Config
	routes    []routePlan
	grants    grantPlan
	jail      acl.JailConfig
	banIgnore *acl.Allowlist
	self      []netip.Addr
	applied   []string // settings that change now
	restart   []string // settings that changed but wait for a restart
}

// waitForRestart moves name from the settings applied now to those that
// wait for a restart.
func (p *reloadPlan) waitForRestart(name string) {
	if i := slices.Index(p.applied, name); i >= 0 {
		p.applied = slices.Delete(p.applied, i, i+1)
		p.restart = append(p.restart, name)
	}
}

// Reload (SIGHUP) re-reads the configuration and puts it in force whole,
// or, if any part of it is broken, keeps the whole running one and logs
// every problem. See the comment at the top of this file.
func (g *Gateway) Reload() {
	call(g.opts.Hooks.Reloading)
	defer call(g.opts.Hooks.Reloaded)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.log.Info("SIGHUP: reloading the configuration")
	next := g.applied
	if g.opts.Reread != nil {
		cfg, err := g.opts.Reread()
		if err != nil {
			g.log.Error("configuration reload failed; the running configuration stays in force", zap.Error(err))
			return
		}
		next = cfg.clone()
	}
	plan, err := g.prepare(next)
	if err != nil {
		g.log.Error("configuration reload failed; the running configuration stays in force, nothing changed", zap.Error(err))
		return
	}
	g.commit(plan)
	if len(plan.applied) > 0 {
		g.log.Info("configuration reloaded", zap.Strings("changed", plan.applied))
	} else {
		g.log.Info("configuration reloaded; no setting changed (certificate and CA files were re-read)")
	}
	if len(plan.restart) > 0 {
		g.log.Warn("settings changed that take effect only after a restart; they keep their running values until then", zap.Strings("restart_needed", plan.restart))
	}
}

// prepare checks cfg and builds every part a reload would put in force,
// changing nothing that runs. Every problem is returned.
func (g *Gateway) prepare(cfg *Config) (*reloadPlan, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	plan := &reloadPlan{cfg: cfg}
	var errs []error
	var err error
	// The ignore list, and with BanIgnoreSelf the host's own addresses,
	// read again: interfaces come and go.
	plan.banIgnore, err = acl.ParseList(acl.FieldIgnore, cfg.BanIgnore)
	errs = append(errs, err)
	if cfg.BanIgnoreSelf {
		plan.self, err = g.opts.ownAddrs()
		errs = append(errs, err)
	}
	if plan.jail, err = jailConfig(cfg, plan.banIgnore.WithAddrs(plan.self), g.log, nil); err != nil {
		errs = append(errs, err)
	}
	if plan.grants, err = g.prepareGrants(cfg); err != nil {
		errs = append(errs, err)
	}
	limits := g.cancel.Limits()
	limits.Rate, limits.Burst, limits.UnknownPerFailure = cfg.CancelRate, cfg.CancelBurst, cfg.CancelUnknownPerFailure
	if _, err := proxy.NewCancelLimiter(limits); err != nil {
		errs = append(errs, err)
	}
	plan.applied, plan.restart = g.diff(*g.applied, *cfg, configSettings, "", "Route", "Routes")
	if plan.grants.balancersNeedRestart {
		plan.waitForRestart(g.opts.Names.Of(FieldGrantProxyProtocolFrom))
		cfg.GrantProxyProtocolFrom = g.applied.GrantProxyProtocolFrom
	}

	running := map[string]*route{}
	for _, r := range g.routes {
		running[r.cfg.Name] = r
	}
	seen := map[string]bool{}
	for _, rc := range cfg.AllRoutes() {
		seen[rc.Name] = true
		r, ok := running[rc.Name]
		if !ok {
			plan.restart = append(plan.restart, fmt.Sprintf("route %s (new)", rc.Name))
			// Checked all the same, so the restart will not fail on it.
			if _, err := g.checkNewRoute(cfg, rc); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		rp, err := g.prepareRoute(cfg, r, rc, plan)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		plan.routes = append(plan.routes, rp)
	}
	for _, r := range g.routes {
		if !seen[r.cfg.Name] {
			plan.restart = append(plan.restart, fmt.Sprintf("route %s (removed; it serves until a restart)", r.cfg.Name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return plan, nil
}

// prepareRoute builds the parts of running route r from its new settings
// rc. Files whose paths did not change are staged on the route's loader
// and authorizer; new paths or rules get new ones.
func (g *Gateway) prepareRoute(cfg *Config, r *route, rc RouteConfig, plan *reloadPlan) (routePlan, error) {
	wrap := func(err error) error { return fmt.Errorf("%s%w", cfg.routePrefix(rc), err) }
	rp := routePlan{r: r, cfg: rc}
	prefix := ""
	if len(g.routes) > 1 || len(cfg.Routes) > 0 {
		prefix = "route " + rc.Name + ": "
	}
	applied, restart := g.diff(r.cfg, rc, routeSettings, prefix, "Name")
	plan.applied = append(plan.applied, applied...)
	plan.restart = append(plan.restart, restart...)
	// What needs a restart keeps its running value, so the next reload
	// still reports it; it is checked all the same.
	var errs []error
	if _, err := parseUpstream(rc.Upstream, rc.AllowRemoteUpstream); err != nil {
		errs = append(errs, wrap(err))
	}
	for _, spec := range rc.Listen {
		if _, err := resolveListen(spec); err != nil {
			errs = append(errs, wrap(err))
		}
	}
	rp.cfg.Listen, rp.cfg.Upstream, rp.cfg.AllowRemoteUpstream = r.cfg.Listen, r.cfg.Upstream, r.cfg.AllowRemoteUpstream
	trusted, err := proxyproto.ParseTrusted(rc.ProxyProtocolFrom)
	switch {
	case err != nil:
		errs = append(errs, wrap(err))
	case (trusted == nil) != (r.sources == nil):
		// The listeners defer to a header only if they did so from the
		// start: turning PROXY protocol on or off needs new listeners.
		plan.waitForRestart(prefix + g.opts.Names.Of(proxyproto.FieldTrusted))
		rp.cfg.ProxyProtocolFrom = r.cfg.ProxyProtocolFrom
	default:
		rp.trusted = trusted
	}

	if rp.allow, err = acl.ParseAllowlist(rc.Allow); err != nil {
		errs = append(errs, wrap(err))
	}
	if rp.tls.policy, err = tlsPolicy(rc); err != nil {
		errs = append(errs, wrap(err))
	}
	log := g.log.With(zap.String("route", rc.Name))
	old := r.tls
	if rc.TLSCert == r.cfg.TLSCert && rc.TLSKey == r.cfg.TLSKey {
		rp.tls.loader = old.loader
		if commit, err := old.loader.Stage(); err != nil {
			errs = append(errs, wrap(err))
		} else {
			rp.commits = append(rp.commits, commit)
		}
	} else if rp.tls.loader, err = certs.NewLoader(rc.TLSCert, rc.TLSKey, log); err != nil {
		errs = append(errs, wrap(err))
	}
	if sameClientRules(old.policy, rp.tls.policy) {
		rp.tls.authz = old.authz
		if commit, err := old.authz.Stage(); err != nil {
			errs = append(errs, wrap(err))
		} else {
			rp.commits = append(rp.commits, commit)
		}
	} else if rp.tls.authz, err = certs.NewAuthorizer(rp.tls.policy, log); err != nil {
		errs = append(errs, wrap(err))
	}
	if len(errs) > 0 {
		return rp, errors.Join(errs...)
	}
	if rp.tls.config, err = certs.ServerConfig(rp.tls.loader, rp.tls.policy); err != nil {
		return rp, wrap(err)
	}
	rp.tun = tunables(cfg, rc, rp.tls)
	return rp, nil
}

// checkNewRoute checks a route a restart would add, without building it.
func (g *Gateway) checkNewRoute(cfg *Config, rc RouteConfig) (RouteConfig, error) {
	wrap := func(err error) error { return fmt.Errorf("%s%w", cfg.routePrefix(rc), err) }
	var errs []error
	if _, err := acl.ParseAllowlist(rc.Allow); err != nil {
		errs = append(errs, wrap(err))
	}
	if _, err := parseUpstream(rc.Upstream, rc.AllowRemoteUpstream); err != nil {
		errs = append(errs, wrap(err))
	}
	for _, spec := range rc.Listen {
		if _, err := resolveListen(spec); err != nil {
			errs = append(errs, wrap(err))
		}
	}
	if _, err := tlsPolicy(rc); err != nil {
		errs = append(errs, wrap(err))
	}
	return rc, errors.Join(errs...)
}

// sameClientRules reports whether two policies have the same client
// certificate rules and files (the minimum version aside).
func sameClientRules(a, b certs.Policy) bool {
	a.MinVersion, b.MinVersion = 0, 0
	return reflect.DeepEqual(normalizePolicy(a), normalizePolicy(b))
}

func normalizePolicy(p certs.Policy) certs.Policy {
	for _, l := range []*[]string{&p.AllowCN, &p.AllowSAN, &p.MapUser} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	return p
}

// commit puts a prepared plan in force. Nothing here can fail: prepare
// checked it all. The caller holds g.mu.
func (g *Gateway) commit(plan *reloadPlan) {
	cfg := plan.cfg
	if err := g.jail.Reconfigure(plan.jail); err != nil {
		// prepare checked the same configuration.
		g.log.Error("ban settings not reloaded", zap.Error(err))
	}
	logWarnings(g.log, plan.banIgnore)
	g.selfMu.Lock()
	selfChanged := !slices.Equal(plan.self, g.self)
	g.banIgnore, g.self = plan.banIgnore, plan.self
	g.selfMu.Unlock()
	if selfChanged && cfg.BanIgnoreSelf {
		g.logSelf("the host's own addresses changed; they are never banned")
	}
	if err := g.cancel.SetLimits(cfg.CancelRate, cfg.CancelBurst, cfg.CancelUnknownPerFailure); err != nil {
		g.log.Error("cancel limits not reloaded", zap.Error(err))
	}
	g.upstream.SetMax(cfg.MaxUpstreamStartups)
	g.commitGrants(plan.grants)
	g.drainTimeout.Store(int64(cfg.DrainTimeout))
	g.ppTimeout.Store(int64(proxyProtocolTimeout(cfg)))
	for _, rp := range plan.routes {
		r := rp.r
		for _, commit := range rp.commits {
			commit()
		}
		old := r.policy.Allowlist()
		r.policy.SetAllowlist(rp.allow)
		r.hits.SetAllowlist(rp.allow)
		if rp.allow.String() != old.String() {
			g.log.Info("allowlist reloaded", zap.String("route", r.cfg.Name), zap.Stringer("allow", rp.allow))
			logWarnings(g.log.With(zap.String("route", r.cfg.Name)), rp.allow)
			if rp.allow.AllowsAny() {
				g.log.Warn("allowlist admits every address: this gateway is open to the whole internet; narrow "+g.opts.Names.Of(acl.FieldAllow),
					zap.String("route", r.cfg.Name), zap.Stringer("allow", rp.allow))
			}
		}
		if r.sources != nil && rp.trusted != nil {
			r.sources.trusted.Store(rp.trusted)
		}
		if err := r.server.SetTunables(rp.tun); err != nil {
			g.log.Error("proxy settings not reloaded", zap.String("route", r.cfg.Name), zap.Error(err))
		}
		filesChanged := rp.tls.loader != r.tls.loader || rp.tls.authz != r.tls.authz
		newAuthz := rp.tls.authz != r.tls.authz
		r.tls = rp.tls
		if newAuthz {
			// A kept authorizer ran the hook in its commit above.
			g.endRevokedOnReload(r, rp.tls.authz)
			g.endRevoked(r, rp.tls.authz)
		}
		r.cert.Store(rp.tls.loader)
		r.cfg = rp.cfg
		if filesChanged && r.stopWatch != nil && g.watchCtx != nil {
			r.stopWatch()
			g.watch(g.watchCtx, r, g.watchWG)
		}
	}
	// What waits for a restart keeps its running value, so the next
	// reload still compares against what runs.
	applied := cfg.clone()
	av, ov := reflect.ValueOf(applied).Elem(), reflect.ValueOf(g.applied).Elem()
	for i := range av.NumField() {
		name := av.Type().Field(i).Name
		if s, known := configSettings[name]; name != "Route" && name != "Routes" && (!known || !s.reload) {
			av.Field(i).Set(ov.Field(i))
		}
	}
	g.applied = applied
}
