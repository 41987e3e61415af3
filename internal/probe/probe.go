package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/pgwarden/pgwarden/internal/clienttls"
)

// DefaultTimeout bounds each network step of a probe.
const DefaultTimeout = 10 * time.Second

// Config is what to probe and how.
type Config struct {
	// Address is HOST:PORT.
	Address string
	// TLS carries the server name, roots, client certificate and direct
	// TLS choice. SkipVerify is ignored: the probe verifies by itself, to
	// report the handshake and the certificate as separate layers.
	TLS clienttls.Config
	// RootCAFile names TLS.RootCAs in the evidence ("" = system roots).
	RootCAFile string
	// User, when set, makes the probe log in (auth) and run SELECT 1
	// (query); Database defaults to User.
	User, Database string
	// Password, if any; without one a password request is reported, and
	// the probe hangs up before answering it (which pgwarden does not count
	// as a failed login).
	Password string
	// Timeout bounds each network step (DefaultTimeout if zero).
	Timeout time.Duration
	// Dialer is a test seam (a fixed source address); nil is a net.Dialer.
	Dialer *net.Dialer
	// Resolver is a test seam; nil is net.DefaultResolver.
	Resolver *net.Resolver
}

// prober carries one run's state between layers.
type prober struct {
	cfg  Config
	res  *Result
	host string
	port string
	tls  clienttls.Config
}

// Run probes cfg.Address layer by layer. It never returns nil and never
// panics on anything a server sends; every step is bounded by cfg.Timeout.
func Run(ctx context.Context, cfg Config) *Result {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.User != "" && cfg.Database == "" {
		cfg.Database = cfg.User
	}
	p := &prober{cfg: cfg, res: &Result{}, tls: cfg.TLS}
	p.tls.SkipVerify = true // see Config.TLS
	for _, l := range p.res.layers() {
		l.Status, l.Detail = StatusSkip, "not reached: an earlier layer failed"
	}
	p.run(ctx)
	return p.res
}

// fail marks name failed; the layers after it keep their "not reached".
func (p *prober) fail(name, detail string) {
	l := p.res.layer(name)
	l.Status, l.Detail = StatusFail, detail
}

func (p *prober) ok(name, detail string) {
	l := p.res.layer(name)
	l.Status, l.Detail = StatusOK, detail
}

func (p *prober) skip(name, detail string) {
	l := p.res.layer(name)
	l.Status, l.Detail = StatusSkip, detail
}

// failErr marks the layer err is attributed to (or fallback) as failed with
// err's message.
func (p *prober) failErr(err error, fallback string) {
	var le *clienttls.Error
	if errors.As(err, &le) {
		msg := le.Msg
		if le.Err != nil {
			msg += ": " + le.Err.Error()
		}
		p.fail(le.Layer, msg)
		return
	}
	p.fail(fallback, err.Error())
}

func (p *prober) step(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, p.cfg.Timeout)
}

func (p *prober) run(ctx context.Context) {
	host, port, err := net.SplitHostPort(p.cfg.Address)
	if err != nil {
		p.fail(clienttls.LayerResolve, fmt.Sprintf("%q is not HOST:PORT", p.cfg.Address))
		return
	}
	p.host, p.port = host, port
	addrs, ok := p.resolve(ctx)
	if !ok {
		return
	}
	conn, ok := p.connect(ctx, addrs)
	if !ok {
		return
	}
	defer conn.Close()
	if !p.negotiate(conn) {
		return
	}
	tc, info, ok := p.handshake(ctx, conn)
	if !ok {
		return
	}
	defer tc.Close()
	p.session(ctx, tc, info)
}

// resolve looks the host up (an IP literal needs no lookup).
func (p *prober) resolve(ctx context.Context) ([]netip.Addr, bool) {
	if ip, err := netip.ParseAddr(p.host); err == nil {
		p.ok(clienttls.LayerResolve, fmt.Sprintf("%s is an IP address: no lookup", ip))
		p.res.Resolve.Addresses = []string{ip.String()}
		return []netip.Addr{ip}, true
	}
	sctx, cancel := p.step(ctx)
	defer cancel()
	ips, err := p.cfg.Resolver.LookupNetIP(sctx, "ip", p.host)
	if err != nil {
		p.failErr(clienttls.ClassifyDialError(err, p.host, p.cfg.Timeout), clienttls.LayerResolve)
		return nil, false
	}
	if len(ips) == 0 {
		p.fail(clienttls.LayerResolve, fmt.Sprintf("%q resolves to no address", p.host))
		return nil, false
	}
	names := make([]string, len(ips))
	for i, ip := range ips {
		ips[i] = ip.Unmap()
		names[i] = ips[i].String()
	}
	p.res.Resolve.Addresses = names
	p.ok(clienttls.LayerResolve, fmt.Sprintf("%s → %s", p.host, strings.Join(names, ", ")))
	return ips, true
}

// connect tries each address in order, as libpq does, and keeps the first
// that accepts. The tcp verdict waits for the first exchange: a reset
// there is the tcp layer's (an allowlist or a ban).
func (p *prober) connect(ctx context.Context, addrs []netip.Addr) (net.Conn, bool) {
	var failures []string
	var lastErr error
	for _, ip := range addrs {
		addr := net.JoinHostPort(ip.String(), p.port)
		sctx, cancel := p.step(ctx)
		start := time.Now()
		conn, err := p.cfg.Dialer.DialContext(sctx, "tcp", addr)
		cancel()
		if err != nil {
			lastErr = clienttls.ClassifyDialError(err, addr, p.cfg.Timeout)
			failures = append(failures, lastErr.(*clienttls.Error).Msg)
			continue
		}
		ms := msSince(start)
		p.res.TCP.Address, p.res.TCP.Source, p.res.TCP.Milliseconds = addr, conn.LocalAddr().String(), ms
		detail := fmt.Sprintf("connected to %s from %s in %s", addr, conn.LocalAddr(), fmtMS(ms))
		if len(failures) > 0 {
			detail += " (after: " + strings.Join(failures, "; ") + ")"
		}
		p.ok(clienttls.LayerTCP, detail)
		return conn, true
	}
	if len(failures) > 1 {
		p.fail(clienttls.LayerTCP, fmt.Sprintf("every address failed: %s", strings.Join(failures, "; ")))
	} else {
		p.failErr(lastErr, clienttls.LayerTCP)
	}
	return nil, false
}

// negotiate sends the SSLRequest (or nothing, for direct TLS).
func (p *prober) negotiate(conn net.Conn) bool {
	if p.tls.DirectTLS {
		p.res.Negotiate.Reply = "direct"
		p.skip(clienttls.LayerNegotiate, "direct TLS (--direct-tls): no SSLRequest sent")
		return true
	}
	_ = conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	defer func() { _ = conn.SetDeadline(time.Time{}) }()
	reply, err := clienttls.RequestTLS(conn)
	switch reply {
	case 0:
	case 'S', 'N', 'E':
		p.res.Negotiate.Reply = string(rune(reply))
	default:
		p.res.Negotiate.Reply = fmt.Sprintf("0x%02x", reply)
	}
	if err != nil {
		if clienttls.LayerOf(err) == clienttls.LayerTCP {
			p.resetAtAccept()
			return false
		}
		p.failErr(err, clienttls.LayerNegotiate)
		return false
	}
	p.ok(clienttls.LayerNegotiate, "'S': the server offers TLS, and sent nothing after its answer")
	return true
}

// resetAtAccept turns the tcp verdict into a failure: the connection was
// accepted and then reset before any byte came back.
func (p *prober) resetAtAccept() {
	p.res.TCP.Status = StatusFail
	p.res.TCP.Detail = fmt.Sprintf("connected to %s, then %s", p.res.TCP.Address, clienttls.ResetAtAccept)
}

func msSince(t time.Time) float64 {
	return float64(time.Since(t).Microseconds()) / 1000
}

func fmtMS(ms float64) string {
	prec := 1
	if ms < 1 {
		prec = 2
	}
	return strconv.FormatFloat(ms, 'f', prec, 64) + " ms"
}

// tlsVersionName prints a TLS version the way people write it.
func tlsVersionName(v uint16) string {
	return tls.VersionName(v)
}
