package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/testproc"
)

// haproxyBinary finds Debian's haproxy ($HAPROXY, PATH, /usr/sbin). It is
// optional: the test skips without it, except under CI, where .ci/run
// installs it and says so when it could not (PGWARDEN_HAPROXY_UNAVAILABLE).
func haproxyBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("HAPROXY"), "haproxy", "/usr/sbin/haproxy"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" && os.Getenv("PGWARDEN_HAPROXY_UNAVAILABLE") == "" {
		t.Fatal("haproxy not found under CI (.ci/run installs Debian's haproxy, or sets PGWARDEN_HAPROXY_UNAVAILABLE)")
	}
	t.Skip("haproxy not found (apt-get install haproxy, or set HAPROXY)")
	return ""
}

// TestProxyProtocolThroughHAProxy puts a real HAProxy (mode tcp,
// send-proxy-v2, health checks on) in front of the gateway: a client's
// login through it is judged and logged by the client's own address, and
// HAProxy's health checks, which carry a PROXY v2 LOCAL header, never
// reach postgres.
func TestProxyProtocolThroughHAProxy(t *testing.T) {
	bin := haproxyBinary(t)
	pg := pgtest.Start(t)
	e := startLBEnv(t, pg)
	front := fmt.Sprintf("127.0.0.3:%d", freePort(t))
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend postgres
    bind %s
    default_backend gateways
backend gateways
    server gw1 %s send-proxy-v2 source %s check inter 200ms
`, front, e.addr, balancerIP)), 0o600))
	cmd := exec.Command(bin, "-db", "-f", cfg)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := testproc.Start(cmd)
	require.NoError(t, err)
	t.Cleanup(p.Kill)
	said := func() string {
		select {
		case <-p.Done:
			return fmt.Sprintf("haproxy exited (%v):\n%s", p.Err, out.String())
		default:
			return "haproxy says:\n" + out.String()
		}
	}

	// HAProxy's checks arrive as LOCAL headers: health_check, not errors.
	require.Eventually(t, func() bool {
		return metricValue(t, e.admin, `pgwarden_connections_total{outcome="health_check",route="default"}`) >= 2
	}, 30*time.Second, 50*time.Millisecond, "no health check seen; %s", lazy(said))

	// A client through HAProxy, from the allowed address.
	cfgc := e.config(t, allowedIP+":0", 0, pg.Password)
	cfgc.Host, cfgc.Port = "127.0.0.3", uint16(mustPort(t, front))
	conn, err := pgConnect(cfgc)
	require.NoError(t, err, "%s", lazy(said))
	require.NoError(t, closeConn(conn))
	line := e.closedLine(t, allowedIP+":", "ok")
	require.True(t, strings.HasPrefix(fmt.Sprint(line["balancer"]), balancerIP+":"), "balancer field: %v", line)

	// The same through HAProxy from a source outside the allowlist: reset
	// by the gateway, so HAProxy closes the client; postgres hears nothing.
	before := pg.TCPConnectionsReceived()
	cfgd := e.config(t, deniedIP+":0", 0, pg.Password)
	cfgd.Host, cfgd.Port = "127.0.0.3", uint16(mustPort(t, front))
	_, err = pgConnect(cfgd)
	require.Error(t, err)
	require.Empty(t, pgtest.Code(err), "a refused client got a postgres error: %v", err)
	// (HAProxy may retry a connection the server reset at once: at least
	// one refusal.)
	require.Eventually(t, func() bool {
		return metricValue(t, e.admin, `pgwarden_rejections_total{reason="not_allowed",route="default"}`) >= 1
	}, 20*time.Second, 50*time.Millisecond, "no refusal counted; %s", lazy(said))
	require.NoError(t, barrier(pg))
	require.Equal(t, before, pg.TCPConnectionsReceived(), "postgres heard of the refused client")
	require.Zero(t, e.metric(t, `pgwarden_proxy_header_errors_total{reason="no_header"}`))
}

// syncBuffer is a bytes.Buffer that a process writes while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lazy formats as what its function returns when printed: a failure
// message about a process's output, taken at the failure.
type lazy func() string

func (l lazy) String() string { return l() }
