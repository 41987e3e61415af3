package check

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/crowdsec"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/gateway"
)

// checkListen: each listen address can be bound; one that is taken is
// fine only if this configuration's gateway holds it (it serves this
// certificate), or, when that cannot be told, a pgwarden admin endpoint of
// this configuration answers.
func (c *checker) checkListen(rc gateway.RouteConfig) {
	for _, spec := range rc.Listen {
		if strings.HasPrefix(spec, gateway.InheritedPrefix) {
			c.ok("listen", &rc, "%s: a socket systemd passes in (socket activation); its unit binds it", spec)
			continue
		}
		addrs, err := gateway.ResolveListen(spec)
		if err != nil {
			continue // a config FAIL already
		}
		for _, addr := range addrs {
			c.checkBind(rc, addr)
		}
	}
}

// checkGrantListen: the grant endpoint's address can be bound (or a
// running pgwarden holds it).
func (c *checker) checkGrantListen() {
	if c.cfg.GrantListen == "" {
		return
	}
	c.checkBindAs("grant-listen", nil, c.cfg.GrantListen, c.name(gateway.FieldGrantListen))
}

func (c *checker) checkBind(rc gateway.RouteConfig, addr string) {
	c.checkBindAs("listen", &rc, addr, c.name(gateway.FieldListen))
}

// checkBindAs binds addr for a check named check; listenFlag is the
// setting that names it.
func (c *checker) checkBindAs(check string, rc *gateway.RouteConfig, addr, listenFlag string) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		_ = ln.Close()
		c.ok(check, rc, "%s can be bound", addr)
		return
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		target := addr
		if host, port, _ := net.SplitHostPort(addr); host == "" || host == "0.0.0.0" || host == "::" {
			target = net.JoinHostPort("127.0.0.1", port)
		}
		what, _ := c.identify(target)
		if what == "this configuration's gateway" {
			c.ok(check, rc, "%s is in use by a running pgwarden with this configuration (it serves this certificate)", addr)
			return
		}
		if c.adminAnswers() {
			c.ok(check, rc, "%s is in use; the admin endpoint %s of a running pgwarden answers, presumably it holds the address", addr, c.cfg.Admin)
			return
		}
		if what == "" {
			what = "it did not answer an SSLRequest as a postgres server would"
		}
		c.result(check, Fail, rc, "stop what holds it, or choose another "+listenFlag,
			"%s is in use by another program (%s)", addr, what)
	case errors.Is(err, syscall.EACCES):
		c.result(check, Fail, rc, "grant CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE), use socket activation (contrib/systemd/pgwarden.socket), or listen on a port above 1023",
			"%s: permission denied (a port below 1024 needs a capability)", addr)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		c.result(check, Fail, rc, "use an address of this host in "+listenFlag, "%s is not an address of this host", addr)
	default:
		c.result(check, Fail, rc, "", "%s cannot be bound: %v", addr, err)
	}
}

// adminAnswers reports whether the configured admin endpoint answers
// /healthz as pgwarden's does.
func (c *checker) adminAnswers() bool {
	if c.cfg.Admin == "" {
		return false
	}
	bind, err := admin.ValidateAddr(c.cfg.Admin)
	if err != nil {
		return false
	}
	client := &http.Client{Timeout: c.env.DialTimeout, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + bind + "/healthz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	return resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok"
}

// checkAllowlist: an entry that admits everyone, or nearly (shorter than
// /8), makes the allowlist no gate at all.
func (c *checker) checkAllowlist(rc gateway.RouteConfig) {
	allow, err := acl.ParseAllowlist(rc.Allow)
	if err != nil {
		return // a config FAIL already
	}
	var wide []string
	for _, p := range allow.Prefixes() {
		if p.Bits() < 8 {
			wide = append(wide, p.String())
		}
	}
	if len(wide) > 0 {
		c.result("allowlist", Warn, &rc, "list the networks clients come from in "+c.name(acl.FieldAllow)+" (grant CI runners access for a while instead of opening to all)",
			"%s: the allowlist admits most of the internet and is no gate", strings.Join(wide, ", "))
		return
	}
	c.ok("allowlist", &rc, "%s: %s", plural(allow.Len(), "entry", "entries"), allow)
}

// checkBalancers: trusted load balancers, when there are some, are a few
// addresses: whoever is listed can name any client address in a PROXY
// header, and so pass the allowlist and bans (or obtain grants) as anyone.
func (c *checker) checkBalancers(check string, rc *gateway.RouteConfig, field fielderr.Field, entries []string) {
	if len(entries) == 0 {
		return
	}
	list, err := acl.ParseList(field, entries)
	if err != nil {
		return // a config FAIL already
	}
	var wide []string
	for _, p := range list.Prefixes() {
		if p.Bits() < 8 || (p.Addr().Is6() && p.Bits() < 32) {
			wide = append(wide, p.String())
		}
	}
	if len(wide) > 0 {
		c.result(check, Warn, rc, "list only the load balancers' own addresses in "+c.name(field),
			"%s: any peer there may claim any client address in a PROXY header, passing the allowlist and bans as anyone", strings.Join(wide, ", "))
		return
	}
	c.ok(check, rc, "%s: %s (their PROXY headers name the clients)", plural(list.Len(), "load balancer entry", "load balancer entries"), list)
}

// checkBanState: the state file can be opened for writing (or a running
// pgwarden holds it), or, if it does not exist yet, created.
func (c *checker) checkBanState() {
	path := c.cfg.BanState
	stateFlag := c.name(gateway.FieldBanState)
	if path == "" {
		c.result("ban-state", Warn, nil, "set "+stateFlag+" FILE (e.g. /var/lib/pgwarden/state.db)",
			"bans, ban history and rule hit counts are kept in memory only: a restart frees every banned source")
		return
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		dir := filepath.Dir(path)
		f, err := os.CreateTemp(dir, ".pgwarden-check-*")
		if err != nil {
			c.result("ban-state", Fail, nil, "create the directory, writable by the user pgwarden runs as (systemd: StateDirectory=)",
				"%s does not exist and cannot be created: %v", path, err)
			return
		}
		_ = f.Close()
		_ = os.Remove(f.Name())
		c.ok("ban-state", nil, "%s will be created (the directory is writable)", path)
		return
	case err != nil:
		c.result("ban-state", Fail, nil, "", "%s: %v", path, err)
		return
	case !fi.Mode().IsRegular():
		c.result("ban-state", Fail, nil, "point "+stateFlag+" at a file", "%s is not a regular file", path)
		return
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		c.result("ban-state", Fail, nil, "make it writable by the user pgwarden runs as", "%s cannot be opened for writing: %v", path, err)
		return
	}
	_ = f.Close()
	err = acl.CheckStateFile(path, 200*time.Millisecond)
	switch {
	case errors.Is(err, acl.ErrStateLocked):
		c.ok("ban-state", nil, "%s is writable and locked by a running pgwarden", path)
	case err != nil:
		c.result("ban-state", Warn, nil, "if it is not pgwarden's, point "+stateFlag+" elsewhere",
			"%s is not a state file pgwarden can read (%v): serve moves it aside and starts with no bans", path, err)
	default:
		c.ok("ban-state", nil, "%s is writable", path)
	}
}

// checkAdmin: the admin endpoint listens on loopback only (serve refuses
// anything else) and its address is free or a running pgwarden's.
func (c *checker) checkAdmin() {
	if c.cfg.Admin == "" {
		c.ok("admin", nil, "no admin endpoint (%s): no /metrics, /readyz, pgwarden bans or pgwarden rules", c.name(admin.FieldAddr))
		return
	}
	bind, err := admin.ValidateAddr(c.cfg.Admin)
	if err != nil {
		return // a config FAIL already
	}
	ln, err := net.Listen("tcp", bind)
	switch {
	case err == nil:
		_ = ln.Close()
		c.ok("admin", nil, "%s is loopback and free", bind)
	case c.adminAnswers():
		c.ok("admin", nil, "%s is loopback; a running pgwarden answers there", bind)
	default:
		c.result("admin", Fail, nil, "stop what holds it, or choose another "+c.name(admin.FieldAddr), "%s is loopback but in use by another program: %v", bind, err)
	}
}

// checkUpstreamStartups compares --max-upstream-startups with the slots
// postgres has for it, read from a local postgresql.conf for the
// upstream's port when there is one: a postgres backend that is still
// authenticating holds a connection slot, superuser-reserved ones
// included, so the cap must stay below max_connections −
// superuser_reserved_connections − reserved_connections.
func (c *checker) checkUpstreamStartups() {
	capFlag := c.name(gateway.FieldMaxUpstreamStartups)
	limit := c.cfg.MaxUpstreamStartups
	checked := map[int]bool{}
	for _, rc := range c.routes {
		port := upstreamPort(rc)
		if port == 0 || checked[port] {
			continue
		}
		checked[port] = true
		pc, file := c.findConf(port)
		if file == "" {
			continue
		}
		slots := pc.maxConnections - pc.superuserReserved - pc.reserved
		evidence := fmt.Sprintf("%s: max_connections %d − superuser_reserved_connections %d − reserved_connections %d = %d",
			file, pc.maxConnections, pc.superuserReserved, pc.reserved, slots)
		if limit >= slots {
			c.result("upstream-startups", Warn, &rc, fmt.Sprintf("lower %s below %d minus the sessions your applications keep open", capFlag, slots),
				"%s %d is not below %s: logins still authenticating could take every connection slot", capFlag, limit, evidence)
		} else {
			c.ok("upstream-startups", &rc, "%s %d is below %s", capFlag, limit, evidence)
		}
	}
	if len(checked) == 0 || c.rep.countCheck("upstream-startups") == 0 {
		c.ok("upstream-startups", nil, "hint: keep %s (%d) below postgres's max_connections − superuser_reserved_connections − reserved_connections (100 − 3 − 0 by default) minus your sessions; no local postgresql.conf for the upstream's port was found to compare",
			capFlag, limit)
	}
}

func (r *Report) countCheck(name string) int {
	n := 0
	for _, res := range r.Results {
		if res.Check == name {
			n++
		}
	}
	return n
}

// upstreamPort is the port of a route's upstream, TCP or unix socket
// (.s.PGSQL.PORT); 0 if unknown.
func upstreamPort(rc gateway.RouteConfig) int {
	up, err := gateway.ParseUpstream(rc.Upstream, rc.AllowRemoteUpstream)
	if err != nil {
		return 0
	}
	var p string
	if up.Network == "unix" {
		_, p, _ = strings.Cut(filepath.Base(up.Address), ".s.PGSQL.")
	} else {
		_, p, _ = net.SplitHostPort(up.Address)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// pgConf is what the check reads from a postgresql.conf; unset settings
// have postgres's defaults.
type pgConf struct {
	port, maxConnections, superuserReserved, reserved int
}

// findConf returns the settings of the first postgresql.conf (of
// Env.PostgresConfs) whose port is port.
func (c *checker) findConf(port int) (pgConf, string) {
	for _, pattern := range c.env.PostgresConfs {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			pc, err := readConf(f)
			if err == nil && pc.port == port {
				return pc, f
			}
		}
	}
	return pgConf{}, ""
}

// readConf reads the few settings it needs from postgresql.conf lines
// "name = value # comment" (the last assignment wins, as in postgres;
// include directives are not followed).
func readConf(file string) (pgConf, error) {
	pc := pgConf{port: 5432, maxConnections: 100, superuserReserved: 3}
	f, err := os.Open(file)
	if err != nil {
		return pc, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			fields := strings.Fields(line)
			if len(fields) != 2 {
				continue
			}
			name, value = fields[0], fields[1]
		}
		n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(value), "'"))
		if err != nil {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "port":
			pc.port = n
		case "max_connections":
			pc.maxConnections = n
		case "superuser_reserved_connections":
			pc.superuserReserved = n
		case "reserved_connections":
			pc.reserved = n
		}
	}
	return pc, sc.Err()
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// checkFleet: the Redis the jail and grants are shared on, and the
// CrowdSec LAPI decisions come from, answer. The gateway starts without
// them (an outage is logged and counted), but then bans are not shared
// and CrowdSec's decisions are not applied.
func (c *checker) checkFleet() {
	if c.cfg.Redis != "" {
		c.checkRedis()
	}
	if c.cfg.CrowdSecLAPI != "" {
		c.checkCrowdSec()
	}
	if c.cfg.CrowdSecMachineCredentials != "" {
		c.checkCrowdSecMachine()
	}
}

// checkCrowdSecMachine logs in to the LAPI with the machine credentials
// the jail's bans are pushed with. Logging in changes nothing the running
// gateway relies on (each login gets its own token).
func (c *checker) checkCrowdSecMachine() {
	flag := c.name(gateway.FieldCrowdSecMachineCredentials)
	mc, err := crowdsec.ReadMachineCredentials(c.cfg.CrowdSecMachineCredentials)
	if err != nil {
		return // a config FAIL already
	}
	p, err := crowdsec.NewPusher(crowdsec.PusherConfig{Credentials: mc, Timeout: c.env.DialTimeout,
		HTTPClient: &http.Client{Transport: &http.Transport{Proxy: nil}}})
	if err != nil {
		return // a config FAIL already
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.env.DialTimeout)
	defer cancel()
	if err := p.Login(ctx); err != nil {
		fix := "start the CrowdSec LAPI, or fix the url in " + flag
		if errors.Is(err, crowdsec.ErrLoginRejected) {
			fix = "register the machine: cscli machines add pgwarden --auto -f FILE, and point " + flag + " at FILE"
		}
		c.result("crowdsec-machine", Fail, nil, fix, "machine %q cannot log in to the LAPI at %s: %s; the jail's bans would not be pushed to CrowdSec",
			mc.Login, mc.URL, describe(err))
		return
	}
	c.ok("crowdsec-machine", nil, "machine %q logs in to the LAPI at %s", mc.Login, mc.URL)
}

func (c *checker) checkRedis() {
	flag := c.name(gateway.FieldRedis)
	opts, err := redis.ParseURL(c.cfg.Redis)
	if err != nil {
		return // a config FAIL already
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = c.env.DialTimeout, c.env.DialTimeout, c.env.DialTimeout
	opts.MaxRetries = -1
	client := redis.NewClient(opts)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.env.DialTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		c.result("redis", Fail, nil, "start Redis, or point "+flag+" at it (redis://[:PASSWORD@]HOST:PORT/DB)",
			"%s does not answer PING: %v; bans and grants would not be shared with the other gateways", opts.Addr, err)
		return
	}
	c.ok("redis", nil, "%s answers PING", opts.Addr)
}

// checkCrowdSec asks the LAPI's /health, which needs no key: pulling the
// decision stream with the gateway's key would move the LAPI's record of
// what that bouncer has seen, and the running gateway could miss
// decisions.
func (c *checker) checkCrowdSec() {
	flag := c.name(gateway.FieldCrowdSecLAPI)
	u, err := url.Parse(c.cfg.CrowdSecLAPI)
	if err != nil || u.Host == "" {
		return // a config FAIL already
	}
	health := u.JoinPath("/health")
	client := &http.Client{Timeout: c.env.DialTimeout, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(health.String())
	if err != nil {
		c.result("crowdsec", Fail, nil, "start the CrowdSec LAPI, or point "+flag+" at it",
			"the LAPI at %s does not answer: %s; CrowdSec's decisions would not be applied", u.Host, describe(err))
		return
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode >= 500 {
		c.result("crowdsec", Fail, nil, "see the LAPI's log", "the LAPI at %s answers %s", u.Host, resp.Status)
		return
	}
	c.ok("crowdsec", nil, "the LAPI at %s answers (%s for /health)", u.Host, resp.Status)
}
