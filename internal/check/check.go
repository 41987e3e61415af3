package check

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/gateway"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
)

// Status is a check's verdict.
type Status string

// Verdicts, printed as they are.
const (
	OK   Status = "ok"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Result is one check's verdict.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Route  string `json:"route,omitempty"`
	// Detail is the evidence.
	Detail string `json:"detail"`
	// Fix says what to do about a WARN or FAIL.
	Fix string `json:"fix,omitempty"`
}

// Report is every check's verdict, in order.
type Report struct {
	Results []Result `json:"checks"`
	OK      int      `json:"ok"`
	Warn    int      `json:"warn"`
	Fail    int      `json:"fail"`
}

func (r *Report) add(res Result) {
	r.Results = append(r.Results, res)
	switch res.Status {
	case OK:
		r.OK++
	case Warn:
		r.Warn++
	case Fail:
		r.Fail++
	}
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return r.Fail > 0 }

// WriteText prints one line per check: name, verdict, evidence, fix.
func (r *Report) WriteText(w io.Writer) error {
	for _, res := range r.Results {
		name := res.Check
		line := res.Detail
		if res.Route != "" {
			line = "route " + res.Route + ": " + line
		}
		if res.Fix != "" {
			line += "; fix: " + res.Fix
		}
		if _, err := fmt.Fprintf(w, "%-18s %-4s  %s\n", name, res.Status, line); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%d ok, %d WARN, %d FAIL\n", r.OK, r.Warn, r.Fail)
	return err
}

// WriteJSON prints the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// plural is "1 route" or "2 routes".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// ConfigFailure is the report of a configuration that could not even be
// read (its file), one FAIL line per problem: no other check can run.
func ConfigFailure(problems []string) *Report {
	r := &Report{}
	for _, p := range problems {
		r.add(Result{Check: "config", Status: Fail, Detail: p})
	}
	return r
}

// Env is what the checks read from the host; a zero field means the real
// thing.
type Env struct {
	// HostAddrs are this host's addresses that are reachable from other
	// hosts (every interface address but loopback and link-local). Tests
	// stand in a 127.0.0.x address for one.
	HostAddrs func() ([]netip.Addr, error)
	// Listening are the local addresses of the host's listening TCP
	// sockets (for the wildcard check); nil result with a nil error means
	// not known here.
	Listening func() ([]netip.AddrPort, error)
	// PostgresPorts are where a postgres left behind would listen: 5432
	// to 5439.
	PostgresPorts []int
	// PostgresConfs are glob patterns of postgresql.conf files to read
	// max_connections from: Debian's /etc/postgresql/*/*/postgresql.conf.
	PostgresConfs []string
	// Now is the clock.
	Now func() time.Time
	// DialTimeout bounds each connection attempt: 2s.
	DialTimeout time.Duration
}

func (e *Env) setDefaults() {
	if e.HostAddrs == nil {
		e.HostAddrs = hostAddrs
	}
	if e.Listening == nil {
		e.Listening = listeningSockets
	}
	if e.PostgresPorts == nil {
		for p := 5432; p <= 5439; p++ {
			e.PostgresPorts = append(e.PostgresPorts, p)
		}
	}
	if e.PostgresConfs == nil {
		e.PostgresConfs = []string{"/etc/postgresql/*/*/postgresql.conf"}
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.DialTimeout <= 0 {
		e.DialTimeout = 2 * time.Second
	}
}

// Options are the checks' inputs beyond the configuration.
type Options struct {
	// RootCAs is the CA file clients verify the server certificate with
	// (sslrootcert); "" means ca.crt beside the certificate (what
	// `pgwarden certs init` writes) if there is one, else the system roots.
	RootCAs string
	// Names are the command line's names of configuration fields.
	Names fielderr.Names
	// ConfigErrors are problems found before the gateway's own checks
	// (the command line's, e.g. --log-level), reported as config FAILs.
	ConfigErrors []string
	Env          Env
}

// checker runs the checks of one configuration.
type checker struct {
	cfg    *gateway.Config
	routes []gateway.RouteConfig
	opts   Options
	env    Env
	rep    *Report
	// certs are the DER of every route's certificate, to recognise this
	// configuration's gateway when it already listens.
	certs [][]byte
}

// Run checks cfg.
func Run(cfg *gateway.Config, opts Options) *Report {
	opts.Env.setDefaults()
	c := &checker{cfg: cfg, routes: cfg.AllRoutes(), opts: opts, env: opts.Env, rep: &Report{}}
	c.checkConfig()
	c.loadCerts()
	for _, rc := range c.routes {
		c.checkUpstream(rc)
	}
	c.checkOtherPostgres()
	for _, rc := range c.routes {
		c.checkListen(rc)
	}
	c.checkGrantListen()
	for _, rc := range c.routes {
		c.checkCertificate(rc)
	}
	for _, rc := range c.routes {
		c.checkAllowlist(rc)
		c.checkBalancers("balancers", &rc, proxyproto.FieldTrusted, rc.ProxyProtocolFrom)
	}
	if c.cfg.GrantListen != "" {
		c.checkBalancers("grant-balancers", nil, gateway.FieldGrantProxyProtocolFrom, c.cfg.GrantProxyProtocolFrom)
	}
	c.checkBanState()
	c.checkAdmin()
	c.checkFleet()
	c.checkUpstreamStartups()
	return c.rep
}

// route is how a result names its route: not at all with one route.
func (c *checker) route(rc gateway.RouteConfig) string {
	if len(c.routes) > 1 {
		return rc.Name
	}
	return ""
}

func (c *checker) name(f fielderr.Field) string { return c.opts.Names.Of(f) }

func (c *checker) ok(check string, rc *gateway.RouteConfig, format string, a ...any) {
	c.result(check, OK, rc, "", format, a...)
}

func (c *checker) result(check string, st Status, rc *gateway.RouteConfig, fix, format string, a ...any) {
	res := Result{Check: check, Status: st, Detail: fmt.Sprintf(format, a...), Fix: fix}
	if rc != nil {
		res.Route = c.route(*rc)
	}
	c.rep.add(res)
}

// checkConfig builds the gateway as serve would, binding nothing and
// leaving the state file alone (checked by itself below): every problem
// serve would report is a FAIL line.
func (c *checker) checkConfig() {
	problems := append([]string(nil), c.opts.ConfigErrors...)
	cfg := *c.cfg
	cfg.BanState = ""
	g, err := gateway.Build(&cfg, gateway.Options{Logger: zap.NewNop(), Names: c.opts.Names})
	if err != nil {
		problems = append(problems, splitLines(fielderr.Render(err, c.opts.Names))...)
	} else {
		_ = g.Close()
	}
	if len(problems) == 0 {
		listen := 0
		for _, rc := range c.routes {
			listen += len(rc.Listen)
		}
		c.ok("config", nil, "valid: %s, %s", plural(len(c.routes), "route", "routes"), plural(listen, "listen address", "listen addresses"))
		return
	}
	for _, p := range problems {
		c.result("config", Fail, nil, "", "%s", p)
	}
}
