package grantapi_test

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grantapi/granttest"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
	"github.com/pgwarden/pgwarden/internal/proxyproto/pptest"
)

// header is a PROXY header from client to the endpoint.
var header = pptest.Header

// balancedEnv runs the endpoint trusting 127.0.0.2 as a load balancer,
// recording header errors; banned sources are refused.
type balancedEnv struct {
	*granttest.Env
	mu     sync.Mutex
	errors []string
}

func (b *balancedEnv) headerErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

func startBalanced(t *testing.T, banned string, readHeaderTimeout time.Duration) *balancedEnv {
	trusted, err := proxyproto.ParseTrusted([]string{"127.0.0.2"})
	require.NoError(t, err)
	b := &balancedEnv{}
	b.Env = granttest.Start(t, granttest.Options{
		Handler: func(c *grantapi.Config) {
			c.Banned = func(ip netip.Addr) bool { return ip.String() == banned }
		},
		Server: func(c *grantapi.ServerConfig) {
			c.Balancers = func() *proxyproto.Trusted { return trusted }
			c.ProxyHeaderTimeout = func() time.Duration { return time.Second }
			c.ReadHeaderTimeout = readHeaderTimeout
			c.OnProxyHeaderError = func(reason string) {
				b.mu.Lock()
				defer b.mu.Unlock()
				b.errors = append(b.errors, reason)
			}
		},
	})
	return b
}

func TestSelfGrantBehindBalancer(t *testing.T) {
	t.Parallel()
	e := startBalanced(t, "127.0.0.66", 0)

	// v2 and v1 headers: the grant is for the client they name, not for
	// the balancer.
	for _, tc := range []struct {
		version byte
		client  string
	}{{2, "127.0.0.50"}, {1, "127.0.0.51"}} {
		c := e.ClientVia("127.0.0.2", header(t, tc.version, tc.client+":40000", e.Addr))
		a := post(t, c, e.URL, bearer(e.Token(t, "RS256")), nil)
		require.Equal(t, http.StatusCreated, a.status, a.raw)
		require.Equal(t, tc.client, a.body["source"], "PROXY v%d", tc.version)
		_, ok := e.Registry.Covering("main", netip.MustParseAddr(tc.client))
		require.True(t, ok)
	}
	_, ok := e.Registry.Covering("main", netip.MustParseAddr("127.0.0.2"))
	require.False(t, ok, "the balancer itself is granted nothing")

	// A banned client named by the balancer is refused as if direct.
	a := post(t, e.ClientVia("127.0.0.2", header(t, 2, "127.0.0.66:40000", e.Addr)), e.URL, bearer(e.Token(t, "RS256")), nil)
	require.Equal(t, http.StatusForbidden, a.status, a.raw)
	require.Contains(t, a.body["error"], "banned")

	// The balancer without a header: closed, counted, nothing granted.
	_, err := e.ClientVia("127.0.0.2", nil).Post(e.URL+grantapi.Path, "application/json", http.NoBody)
	require.Error(t, err)
	require.Equal(t, []string{"no_header"}, e.headerErrors())

	// A health check (v2 LOCAL): closed without a request, not an error.
	_, err = e.ClientVia("127.0.0.2", pptest.Local(t)).Post(e.URL+grantapi.Path, "application/json", http.NoBody)
	require.Error(t, err)
	require.Equal(t, []string{"no_header"}, e.headerErrors())

	// A header from a peer that is not a trusted balancer is not read as
	// one: it breaks that peer's TLS handshake, and names nobody.
	_, err = e.ClientVia("127.0.0.3", header(t, 2, "127.0.0.52:40000", e.Addr)).Post(e.URL+grantapi.Path, "application/json", http.NoBody)
	require.Error(t, err)
	for _, ip := range []string{"127.0.0.3", "127.0.0.52"} {
		_, ok := e.Registry.Covering("main", netip.MustParseAddr(ip))
		require.False(t, ok, ip)
	}
	require.Equal(t, []grantapi.Outcome{grantapi.OutcomeGranted, grantapi.OutcomeGranted, grantapi.OutcomeBanned}, e.Outcomes())
}

// TestBalancerHeaderWaitHoldsNobody: a balancer connection that sends
// nothing is waited for in its own goroutine (others are served
// meanwhile) and closed at the header timeout; one that sends a header
// and then nothing is closed at the server's own handshake deadline,
// which reading the header must not have lifted.
func TestBalancerHeaderWaitHoldsNobody(t *testing.T) {
	t.Parallel()
	e := startBalanced(t, "", 500*time.Millisecond)
	dial := func(withHeader bool) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		c, err := d.Dial("tcp", e.Addr)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		if withHeader {
			_, err = c.Write(header(t, 2, "127.0.0.53:40000", e.Addr))
			require.NoError(t, err)
		}
		return c
	}
	silent, headerOnly := dial(false), dial(true)

	a := post(t, e.Client("127.0.0.4"), e.URL, bearer(e.Token(t, "RS256")), nil)
	require.Equal(t, http.StatusCreated, a.status, "served while a balancer connection waits: %s", a.raw)

	for name, c := range map[string]net.Conn{"no header": silent, "header, then nothing": headerOnly} {
		// A generous bound, only so that a regression fails instead of
		// hanging: the server closes both within about a second.
		require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
		_, err := c.Read(make([]byte, 1))
		require.Error(t, err, name)
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "%s: the server never closed it", name)
	}
	require.Equal(t, []string{"timeout"}, e.headerErrors())
}
