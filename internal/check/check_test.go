package check

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/gateway"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/redistest"
)

// fixture is a configuration to check, with its files.
type fixture struct {
	cfg    *gateway.Config
	ca     *certstest.CA
	dir    string
	caFile string
}

func newFixture(t *testing.T, upstream string) *fixture {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	f := &fixture{ca: ca, dir: dir, caFile: filepath.Join(dir, "ca.crt")}
	require.NoError(t, os.WriteFile(f.caFile, ca.CertPEM(), 0o600))
	cert, key := f.pair(t, "localhost", "127.0.0.1")
	f.cfg = &gateway.Config{
		Route: gateway.RouteConfig{Listen: []string{"127.0.0.1:0"}, Upstream: upstream, Allow: []string{"127.0.0.1"},
			TLSCert: cert, TLSKey: key},
		HandshakeTimeout: 10 * time.Second, AuthTimeout: time.Minute, AuthStepTimeout: 10 * time.Second,
		DrainTimeout: time.Second, MaxStartups: 10, MaxStartupsPerIP: 10, MaxUpstreamStartups: 32,
		BanMaxRetry: 5, BanFindTime: time.Minute, BanTime: time.Minute, BanTimeFactor: 2, BanMaxTime: time.Hour,
		BanState: filepath.Join(dir, "state.db"), CancelRate: 10, CancelBurst: 50, Relay: "auto",
	}
	return f
}

// pair writes a server certificate and key of the fixture's CA for hosts.
func (f *fixture) pair(t *testing.T, hosts ...string) (cert, key string) {
	t.Helper()
	return f.pairWith(t, hosts, certstest.ValidFor(365*24*time.Hour))
}

func (f *fixture) pairWith(t *testing.T, hosts []string, opts ...certstest.Option) (cert, key string) {
	t.Helper()
	certPEM, keyPEM := f.ca.ServerWith(t, hosts, opts...)
	name := strconv.FormatInt(time.Now().UnixNano(), 36)
	cert, key = filepath.Join(f.dir, name+".crt"), filepath.Join(f.dir, name+".key")
	require.NoError(t, os.WriteFile(cert, certPEM, 0o600))
	require.NoError(t, os.WriteFile(key, keyPEM, 0o600))
	return cert, key
}

// env treats 127.0.0.2 as this host's outside address, and checks for a
// postgres left behind on ports.
func env(ports ...int) Env {
	if ports == nil {
		ports = []int{} // none: not 5432-5439, where this host may run a postgres of its own
	}
	return Env{
		HostAddrs:     func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("127.0.0.2")}, nil },
		PostgresPorts: ports,
		PostgresConfs: []string{},
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := pgtest.FreePort()
	require.NoError(t, err)
	return p
}

// run checks f's configuration and returns the report.
func (f *fixture) run(e Env, opts ...func(*Options)) *Report {
	o := Options{Env: e}
	for _, fn := range opts {
		fn(&o)
	}
	return Run(f.cfg, o)
}

// find returns the results of check.
func find(r *Report, check string) []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Check == check {
			out = append(out, res)
		}
	}
	return out
}

func requireOne(t *testing.T, r *Report, check string, st Status, contains ...string) Result {
	t.Helper()
	var text strings.Builder
	_ = r.WriteText(&text)
	for _, res := range find(r, check) {
		if res.Status != st {
			continue
		}
		all := true
		for _, c := range contains {
			all = all && strings.Contains(res.Detail+" "+res.Fix, c)
		}
		if all {
			return res
		}
	}
	t.Fatalf("no %s %s with %q in:\n%s", check, st, contains, text.String())
	return Result{}
}

// TestCheckHealthy: a sound configuration in front of a postgres that
// listens on loopback only passes every check but none fails.
func TestCheckHealthy(t *testing.T) {
	pg := pgtest.Start(t)
	f := newFixture(t, pg.Addr())
	rep := f.run(env(freePort(t)))
	var text strings.Builder
	require.NoError(t, rep.WriteText(&text))
	require.False(t, rep.Failed(), text.String())
	require.Zero(t, rep.Warn, text.String())
	requireOne(t, rep, "config", OK, "valid: 1 route, 1 listen address")
	requireOne(t, rep, "upstream", OK, "tcp:"+pg.Addr()+" accepts connections")
	requireOne(t, rep, "exposure", OK, fmt.Sprintf("port %d refuses connections on 127.0.0.2", pg.Port))
	requireOne(t, rep, "other-postgres", OK)
	requireOne(t, rep, "listen", OK, "127.0.0.1:0 can be bound")
	requireOne(t, rep, "cert-chain", OK, "verifies against "+f.caFile)
	requireOne(t, rep, "cert-expiry", OK, "days left")
	requireOne(t, rep, "cert-key", OK, "ECDSA P-256")
	requireOne(t, rep, "ban-state", OK, "will be created")
	require.Contains(t, text.String(), "\n")
}

// TestCheckPostgresReachableFromOutside: a postgres that listens on
// another of the host's addresses besides loopback (127.0.0.2 stands in
// for one) is a FAIL naming the address and listen_addresses.
func TestCheckPostgresReachableFromOutside(t *testing.T) {
	pg := pgtest.Start(t, pgtest.WithConf("listen_addresses", "127.0.0.1,127.0.0.2"))
	f := newFixture(t, pg.Addr())
	rep := f.run(env())
	res := requireOne(t, rep, "exposure", Fail, fmt.Sprintf("postgres accepts connections on 127.0.0.2:%d", pg.Port), "listen_addresses = 'localhost'")
	require.True(t, rep.Failed())
	require.Empty(t, res.Route, "one route: not named")
}

// TestCheckWildcardListener: a socket bound to the wildcard address at the
// upstream's port is a FAIL, read from the kernel's socket table; the
// table is parsed for real here (a listener of this test is found in it).
func TestCheckWildcardListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	socks, err := listeningSockets()
	require.NoError(t, err)
	require.Contains(t, socks, netip.MustParseAddrPort(ln.Addr().String()), "this test's listener in /proc/net/tcp")

	pg := pgtest.Start(t)
	f := newFixture(t, pg.Addr())
	e := env()
	e.Listening = func() ([]netip.AddrPort, error) {
		return []netip.AddrPort{netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(pg.Port))}, nil
	}
	rep := f.run(e)
	requireOne(t, rep, "exposure", Fail, fmt.Sprintf("listens on [::]:%d, every address of this host", pg.Port))
}

// TestCheckOtherPostgres: another postgres answering on the host's outside
// address is a FAIL, while this configuration's own running gateway on
// such an address (it serves our certificate) is not taken for one.
func TestCheckOtherPostgres(t *testing.T) {
	pg := pgtest.Start(t)
	left := pgtest.Start(t, pgtest.WithConf("listen_addresses", "127.0.0.2"))
	f := newFixture(t, pg.Addr())
	gwPort := freePort(t)
	f.cfg.Route.Listen = []string{fmt.Sprintf("127.0.0.2:%d", gwPort)}
	f.cfg.Route.Allow = []string{"127.0.0.0/8"}
	runGateway(t, f.cfg)

	rep := f.run(env(left.Port, gwPort))
	requireOne(t, rep, "other-postgres", Fail, fmt.Sprintf("a postgres answers on 127.0.0.2:%d (SSLRequest answered 'N'", left.Port))
	require.NotContains(t, find(rep, "other-postgres")[0].Detail, strconv.Itoa(gwPort))
	requireOne(t, rep, "listen", OK, fmt.Sprintf("127.0.0.2:%d is in use by a running pgwarden with this configuration", gwPort))
	requireOne(t, rep, "ban-state", OK, "locked by a running pgwarden")

	rep = f.run(env(gwPort))
	requireOne(t, rep, "other-postgres", OK)
}

// runGateway runs cfg's gateway until the test ends.
func runGateway(t *testing.T, cfg *gateway.Config) *gateway.Gateway {
	t.Helper()
	g, err := gateway.New(cfg, gateway.Options{Logger: zap.NewNop()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

// TestCheckUpstreamDown: an upstream that refuses connections is a FAIL.
func TestCheckUpstreamDown(t *testing.T) {
	port := freePort(t)
	f := newFixture(t, fmt.Sprintf("127.0.0.1:%d", port))
	rep := f.run(env())
	requireOne(t, rep, "upstream", Fail, "does not accept connections: connection refused", "start postgres")
}

// TestCheckListenInUse: a listen address another program holds is a FAIL.
func TestCheckListenInUse(t *testing.T) {
	pg := pgtest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() { // answers nothing a postgres would
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	f := newFixture(t, pg.Addr())
	f.cfg.Route.Listen = []string{ln.Addr().String()}
	f.cfg.Admin = ln.Addr().String()
	f.cfg.GrantListen = ln.Addr().String()
	rep := f.run(env())
	requireOne(t, rep, "listen", Fail, ln.Addr().String()+" is in use by another program", "choose another")
	requireOne(t, rep, "admin", Fail, "in use by another program")
	requireOne(t, rep, "grant-listen", Fail, ln.Addr().String()+" is in use by another program", "choose another GrantListen")
}

// TestCheckCertificates: each certificate problem is its own verdict.
func TestCheckCertificates(t *testing.T) {
	pg := pgtest.Start(t)

	t.Run("expired", func(t *testing.T) {
		f := newFixture(t, pg.Addr())
		f.cfg.Route.TLSCert, f.cfg.Route.TLSKey = f.pairWith(t, []string{"localhost"},
			certstest.NotBefore(time.Now().Add(-48*time.Hour)), certstest.NotAfter(time.Now().Add(-24*time.Hour)))
		rep := f.run(env())
		requireOne(t, rep, "cert-expiry", Fail, "expired 1 days ago", "pgwarden certs renew")
		requireOne(t, rep, "config", Fail, "expired") // serve's own error
	})
	t.Run("expiring", func(t *testing.T) {
		f := newFixture(t, pg.Addr())
		f.cfg.Route.TLSCert, f.cfg.Route.TLSKey = f.pairWith(t, []string{"localhost"}, certstest.ValidFor(10*24*time.Hour))
		rep := f.run(env())
		requireOne(t, rep, "cert-expiry", Warn, "expires in 9 days")
		require.False(t, rep.Failed())
	})
	t.Run("key does not match", func(t *testing.T) {
		f := newFixture(t, pg.Addr())
		_, otherKey := f.pair(t, "localhost")
		f.cfg.Route.TLSKey = otherKey
		rep := f.run(env())
		requireOne(t, rep, "certificate", Fail, "private key does not match public key")
	})
	t.Run("untrusted chain", func(t *testing.T) {
		f := newFixture(t, pg.Addr())
		other := filepath.Join(t.TempDir(), "other-ca.crt")
		require.NoError(t, os.WriteFile(other, certstest.NewCA(t).CertPEM(), 0o600))
		rep := f.run(env(), func(o *Options) { o.RootCAs = other })
		requireOne(t, rep, "cert-chain", Fail, "does not verify against "+other, "sslrootcert")
	})
	t.Run("names", func(t *testing.T) {
		f := newFixture(t, pg.Addr())
		f.cfg.Route.TLSCert, f.cfg.Route.TLSKey = f.pair(t, "db.example.com")
		f.cfg.Route.Listen = []string{"localhost:0"}
		rep := f.run(env())
		requireOne(t, rep, "cert-names", Fail, "does not cover localhost (it names db.example.com)")
	})
	t.Run("small RSA key", func(t *testing.T) {
		f := newFixture(t, pg.Addr())
		f.cfg.Route.TLSCert, f.cfg.Route.TLSKey = rsaPair(t, f, 1024)
		rep := f.run(env())
		requireOne(t, rep, "cert-key", Fail, "RSA 1024 bits")
	})
}

// rsaPair writes an RSA server certificate of bits signed by f's CA.
func rsaPair(t *testing.T, f *fixture, bits int) (cert, key string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca.Cert, &k.PublicKey, f.ca.Key)
	require.NoError(t, err)
	cert, key = filepath.Join(f.dir, "rsa.crt"), filepath.Join(f.dir, "rsa.key")
	require.NoError(t, os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), 0o600))
	return cert, key
}

// TestCheckAllowlistWorldOpen: 0.0.0.0/0, ::/0 and anything shorter than
// /8 are a WARN (and only a WARN: the exit status stays 0).
func TestCheckAllowlistWorldOpen(t *testing.T) {
	pg := pgtest.Start(t)
	for _, entry := range []string{"0.0.0.0/0", "::/0", "10.0.0.0/7"} {
		f := newFixture(t, pg.Addr())
		f.cfg.Route.Allow = []string{"127.0.0.1", entry}
		rep := f.run(env())
		requireOne(t, rep, "allowlist", Warn, entry+": the allowlist admits most of the internet")
		require.False(t, rep.Failed())
	}
}

// TestCheckBanState: a state file that cannot be created is a FAIL, one
// that is not pgwarden's a WARN, none at all a WARN.
func TestCheckBanState(t *testing.T) {
	pg := pgtest.Start(t)
	f := newFixture(t, pg.Addr())
	notDir := filepath.Join(f.dir, "file")
	require.NoError(t, os.WriteFile(notDir, nil, 0o600))
	f.cfg.BanState = filepath.Join(notDir, "state.db") // under a file: never creatable, even as root
	requireOne(t, f.run(env()), "ban-state", Fail, "does not exist and cannot be created")

	f.cfg.BanState = filepath.Join(f.dir, "garbage.db")
	require.NoError(t, os.WriteFile(f.cfg.BanState, []byte("not bbolt"), 0o600))
	requireOne(t, f.run(env()), "ban-state", Warn, "is not a state file pgwarden can read")

	// A real state file: fine; held by a running jail: fine, and said so.
	f.cfg.BanState = filepath.Join(f.dir, "state.db")
	jcfg := acl.JailConfig{MaxRetry: 5, FindTime: time.Minute, BanTime: time.Minute, TimeFactor: 1, MaxTime: time.Minute, StatePath: f.cfg.BanState}
	j, err := acl.NewJail(jcfg)
	require.NoError(t, err)
	requireOne(t, f.run(env()), "ban-state", OK, "is writable and locked by a running pgwarden")
	require.NoError(t, j.Close())
	requireOne(t, f.run(env()), "ban-state", OK, "is writable")

	f.cfg.BanState = ""
	requireOne(t, f.run(env()), "ban-state", Warn, "kept in memory only", "set BanState FILE")
}

// TestCheckBalancers: trusted load balancers (the routes' and the grant
// endpoint's) are listed when set, and a wide prefix is a WARN.
func TestCheckBalancers(t *testing.T) {
	pg := pgtest.Start(t)
	f := newFixture(t, pg.Addr())
	f.cfg.Route.ProxyProtocolFrom = []string{"10.0.0.2"}
	requireOne(t, f.run(env()), "balancers", OK, "1 load balancer entry: 10.0.0.2/32")
	for _, entry := range []string{"0.0.0.0/0", "10.0.0.0/7", "2001::/16"} {
		f.cfg.Route.ProxyProtocolFrom = []string{"10.0.0.2", entry}
		rep := f.run(env())
		requireOne(t, rep, "balancers", Warn, entry+": any peer there may claim any client address")
		require.False(t, rep.Failed())
	}
}

// TestCheckUpstreamStartups: --max-upstream-startups is compared with the
// postgresql.conf of the upstream's port.
func TestCheckUpstreamStartups(t *testing.T) {
	pg := pgtest.Start(t)
	f := newFixture(t, pg.Addr())
	conf := filepath.Join(t.TempDir(), "postgresql.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
		"# a comment\nport = %d # the port\nmax_connections = 30\nsuperuser_reserved_connections = 3\n#max_connections = 1000\n", pg.Port)), 0o600))
	e := env()
	e.PostgresConfs = []string{filepath.Join(filepath.Dir(conf), "*.conf")}
	rep := f.run(e)
	requireOne(t, rep, "upstream-startups", Warn, "32 is not below "+conf+": max_connections 30 − superuser_reserved_connections 3 − reserved_connections 0 = 27")
	f.cfg.MaxUpstreamStartups = 20
	requireOne(t, f.run(e), "upstream-startups", OK, "20 is below")
	f.cfg.Route.Upstream = pg.SocketDir
	requireOne(t, f.run(e), "upstream-startups", OK, "20 is below", "(unix socket ports are matched too)"[:0])

	requireOne(t, f.run(env()), "upstream-startups", OK, "hint: keep")
}

// TestCheckConfigErrors: a configuration serve would refuse is a FAIL per
// problem, with serve's words.
func TestCheckConfigErrors(t *testing.T) {
	f := newFixture(t, "127.0.0.1:5432")
	f.cfg.Route.Allow = nil
	f.cfg.MaxStartups = 0
	rep := f.run(env())
	requireOne(t, rep, "config", Fail, "no allowlist: add allowlist CIDR")
	requireOne(t, rep, "config", Fail, "MaxStartups and MaxStartupsPerIP must be at least 1")

	f.cfg.Route.Allow = []string{"010.0.0.1"}
	f.cfg.MaxStartups = 10
	requireOne(t, f.run(env()), "config", Fail, `allowlist "010.0.0.1": leading zeros are ambiguous (octal or decimal?); write 10.0.0.1`)
}

// TestCheckFleet: the Redis and CrowdSec LAPI of --redis and
// --crowdsec-lapi must answer; down, each is a FAIL.
func TestCheckFleet(t *testing.T) {
	pg := pgtest.Start(t)
	rds := redistest.Start(t)
	lapi := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" || r.Header.Get("X-Api-Key") != "" {
			http.Error(w, "unexpected", http.StatusTeapot)
			return
		}
		_, _ = w.Write([]byte(`{"status":"up"}`))
	}))
	defer lapi.Close()
	keyFile := filepath.Join(t.TempDir(), "bouncer.key")
	require.NoError(t, os.WriteFile(keyFile, []byte("secret\n"), 0o600))

	f := newFixture(t, pg.Addr())
	f.cfg.Redis = rds.URL()
	f.cfg.CrowdSecLAPI, f.cfg.CrowdSecKeyFile = lapi.URL, keyFile
	rep := f.run(env())
	requireOne(t, rep, "redis", OK, rds.Addr()+" answers PING")
	requireOne(t, rep, "crowdsec", OK, "answers (200 OK for /health)")

	down := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	f.cfg.Redis = "redis://" + down
	f.cfg.CrowdSecLAPI = "http://" + down
	rep = f.run(env())
	requireOne(t, rep, "redis", Fail, down+" does not answer PING")
	requireOne(t, rep, "crowdsec", Fail, "the LAPI at "+down+" does not answer: connection refused")
}

// TestCheckCrowdSecMachine: the machine of --crowdsec-machine-credentials
// must log in to its LAPI; refused, or the LAPI down, it is a FAIL.
func TestCheckCrowdSecMachine(t *testing.T) {
	pg := pgtest.Start(t)
	lapi := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			MachineID string `json:"machine_id"`
			Password  string `json:"password"`
		}
		if r.URL.Path != "/v1/watchers/login" || json.NewDecoder(r.Body).Decode(&in) != nil {
			http.Error(w, "unexpected", http.StatusTeapot)
			return
		}
		if in.MachineID != "pgwarden" || in.Password != "right" {
			http.Error(w, `{"code":401,"message":"incorrect Username or Password"}`, http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"code":200,"expire":"2099-01-01T00:00:00Z","token":"t"}`))
	}))
	defer lapi.Close()
	creds := filepath.Join(t.TempDir(), "machine.yaml")
	write := func(url, pw string) {
		require.NoError(t, os.WriteFile(creds, fmt.Appendf(nil, "url: %s\nlogin: pgwarden\npassword: %s\n", url, pw), 0o600))
	}

	f := newFixture(t, pg.Addr())
	f.cfg.CrowdSecMachineCredentials = creds
	write(lapi.URL, "right")
	requireOne(t, f.run(env()), "crowdsec-machine", OK, `machine "pgwarden" logs in to the LAPI at `+lapi.URL)

	write(lapi.URL, "wrong")
	requireOne(t, f.run(env()), "crowdsec-machine", Fail, "crowdsec LAPI rejected the machine login")

	down := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	write("http://"+down+"/", "right")
	requireOne(t, f.run(env()), "crowdsec-machine", Fail, "connection refused")
}
