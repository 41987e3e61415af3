package grantclient

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// grantServer follows the grant endpoint's contract: POST /v1/grants/self
// with a bearer token, optional {"ttl"}, 201 with the grant, or an error
// status with {"error"}.
type grantServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []grantRequest
	// answer decides the reply to the n-th request (from 0).
	answer func(n int, r grantRequest) (status int, body any, header http.Header)
}

type grantRequest struct {
	Auth   string
	TTL    string
	Body   string
	Remote string // the peer's address
}

func startGrantServer(t *testing.T, answer func(n int, r grantRequest) (int, any, http.Header)) *grantServer {
	gs := &grantServer{answer: answer}
	gs.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/grants/self" {
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var req struct {
			TTL string `json:"ttl"`
		}
		if len(body) > 0 {
			if err := json.Unmarshal(body, &req); err != nil || r.Header.Get("Content-Type") != "application/json" {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
		}
		gr := grantRequest{Auth: r.Header.Get("Authorization"), TTL: req.TTL, Body: string(body), Remote: r.RemoteAddr}
		gs.mu.Lock()
		n := len(gs.requests)
		gs.requests = append(gs.requests, gr)
		gs.mu.Unlock()
		status, out, hdr := gs.answer(n, gr)
		for k, v := range hdr {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if s, ok := out.(string); ok {
			_, _ = io.WriteString(w, s)
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	gs.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake errors are expected in some tests
	gs.StartTLS()
	t.Cleanup(gs.Close)
	return gs
}

func (gs *grantServer) Requests() []grantRequest {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return append([]grantRequest(nil), gs.requests...)
}

func (gs *grantServer) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(gs.Certificate())
	return p
}

func grantFor(until time.Time, id string) map[string]any {
	return map[string]any{"id": id, "source": "127.0.0.1", "until": until.UTC().Format(time.RFC3339Nano),
		"reason": "ci job 42", "users": []string{"app"}, "databases": []string{"app"}, "created_by": "repo:acme/app"}
}

func staticEnv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestGitHubTokenThenGrant(t *testing.T) {
	var tokenCalls atomic.Int32
	tokenSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenCalls.Add(1)
		if r.Header.Get("Authorization") != "bearer request-token" || r.URL.Query().Get("audience") != "https://db.example.com:8443" ||
			r.URL.Query().Get("api-version") != "2.0" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = fmt.Fprintf(w, `{"count":1,"value":"jwt-%d"}`, tokenCalls.Load())
	}))
	defer tokenSrv.Close()
	until := time.Now().Add(20 * time.Minute).Truncate(time.Second)
	gs := startGrantServer(t, func(int, grantRequest) (int, any, http.Header) {
		return http.StatusCreated, grantFor(until, "g-1"), nil
	})
	env := staticEnv(map[string]string{
		"ACTIONS_ID_TOKEN_REQUEST_URL":   tokenSrv.URL + "/token?api-version=2.0",
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
	})
	c, err := New(Config{URL: gs.URL + "/", TTL: "20m", RootCAs: gs.roots(),
		Tokens: GitHubToken{Audience: "https://db.example.com:8443", Getenv: env, Client: tokenSrv.Client()}})
	require.NoError(t, err)
	g, err := c.Request(context.Background())
	require.NoError(t, err)
	require.Equal(t, "g-1", g.ID)
	require.Equal(t, "127.0.0.1", g.Source)
	require.True(t, g.Until.Equal(until))
	require.Equal(t, []string{"app"}, g.Users)
	require.Equal(t, "repo:acme/app", g.CreatedBy)
	reqs := gs.Requests()
	require.Len(t, reqs, 1)
	require.Equal(t, "Bearer jwt-1", reqs[0].Auth)
	require.Equal(t, "20m", reqs[0].TTL)

	// Without the GitHub variables the error says what the job lacks.
	c2, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: GitHubToken{Audience: "x", Getenv: staticEnv(nil)}})
	require.NoError(t, err)
	_, err = c2.Request(context.Background())
	require.ErrorContains(t, err, "id-token: write")
}

func TestEnvTokenAndNoTTL(t *testing.T) {
	gs := startGrantServer(t, func(int, grantRequest) (int, any, http.Header) {
		return http.StatusCreated, grantFor(time.Now().Add(time.Hour), "g-2"), nil
	})
	c, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: EnvToken{Name: "CI_JOB_JWT", Getenv: staticEnv(map[string]string{"CI_JOB_JWT": " gitlab-jwt\n"})}})
	require.NoError(t, err)
	_, err = c.Request(context.Background())
	require.NoError(t, err)
	require.Equal(t, "Bearer gitlab-jwt", gs.Requests()[0].Auth)
	require.Empty(t, gs.Requests()[0].Body, "no ttl: no body")

	c, err = New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: EnvToken{Name: "UNSET", Getenv: staticEnv(nil)}})
	require.NoError(t, err)
	_, err = c.Request(context.Background())
	require.ErrorContains(t, err, "UNSET is empty or not set")
	require.Len(t, gs.Requests(), 1, "no request without a token")
}

func TestGrantErrors(t *testing.T) {
	tests := []struct {
		status   int
		body     any
		header   http.Header
		want     []string
		retryIn  time.Duration
		contains string
	}{
		{status: 401, body: map[string]string{"error": "token expired"}, want: []string{"401", "token was not accepted", "token expired"}},
		{status: 403, body: map[string]string{"error": "repository acme/fork is not allowed"}, want: []string{"403", "acme/fork"}},
		{status: 409, body: map[string]string{"error": "grant exists"}, want: []string{"409", "grant exists"}},
		{status: 413, body: map[string]string{"error": "body too large"}, want: []string{"413"}},
		{status: 429, body: map[string]string{"error": "slow down\x1b[2J"}, header: http.Header{"Retry-After": {"7"}}, want: []string{"429", "slow down?[2J"}, retryIn: 7 * time.Second},
		{status: 500, body: "<html>oops</html>", want: []string{"500", "Internal Server Error"}},
		{status: 201, body: strings.Repeat("x", maxGrantResponse+10), want: []string{"larger than"}},
		{status: 201, body: `{"id":"x"}`, want: []string{`no "until"`}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.status, tc.want[0]), func(t *testing.T) {
			gs := startGrantServer(t, func(int, grantRequest) (int, any, http.Header) { return tc.status, tc.body, tc.header })
			c, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: EnvToken{Name: "T", Getenv: staticEnv(map[string]string{"T": "jwt"})}})
			require.NoError(t, err)
			_, err = c.Request(context.Background())
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			var ae *APIError
			if tc.retryIn > 0 {
				require.ErrorAs(t, err, &ae)
				require.Equal(t, tc.retryIn, ae.RetryAfter)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	tok := EnvToken{Name: "T", Getenv: staticEnv(nil)}
	for cfg, want := range map[*Config]string{
		{URL: "http://db.example.com:8443", Tokens: tok}:         "must be https",
		{URL: "db.example.com", Tokens: tok}:                     "want https://HOST",
		{URL: "https://db.example.com"}:                          "no token source",
		{URL: "https://db.example.com", Tokens: tok, TTL: "-5m"}: "ttl",
	} {
		_, err := New(*cfg)
		require.ErrorContains(t, err, want)
	}
}

func TestUnverifiedGrantServerIsRefused(t *testing.T) {
	gs := startGrantServer(t, func(int, grantRequest) (int, any, http.Header) {
		return 201, grantFor(time.Now().Add(time.Hour), "x"), nil
	})
	c, err := New(Config{URL: gs.URL, Tokens: EnvToken{Name: "T", Getenv: staticEnv(map[string]string{"T": "jwt"})}})
	require.NoError(t, err)
	_, err = c.Request(context.Background())
	require.ErrorContains(t, err, "certificate")
	require.Empty(t, gs.Requests(), "the token never left")
}

func TestNetworkPinsTheFamily(t *testing.T) {
	gs := startGrantServer(t, func(int, grantRequest) (int, any, http.Header) {
		return 201, grantFor(time.Now().Add(time.Hour), "x"), nil
	})
	tok := EnvToken{Name: "T", Getenv: staticEnv(map[string]string{"T": "jwt"})}
	c, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: tok, Network: "tcp6"})
	require.NoError(t, err)
	_, err = c.Request(context.Background())
	require.Error(t, err, "an IPv4 endpoint is unreachable over tcp6")
	c, err = New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: tok, Network: "tcp4"})
	require.NoError(t, err)
	_, err = c.Request(context.Background())
	require.NoError(t, err)
}

func TestKeepRenewsBeforeExpiry(t *testing.T) {
	// Grants of 3 s; the second request fails with 429 and a Retry-After
	// of 1 s, the rest succeed.
	gs := startGrantServer(t, func(n int, _ grantRequest) (int, any, http.Header) {
		if n == 1 {
			return http.StatusTooManyRequests, map[string]string{"error": "slow down"}, http.Header{"Retry-After": {"1"}}
		}
		return http.StatusCreated, grantFor(time.Now().Add(3*time.Second), fmt.Sprintf("g-%d", n)), nil
	})
	c, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: EnvToken{Name: "T", Getenv: staticEnv(map[string]string{"T": "jwt"})}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	g, err := c.Request(ctx)
	require.NoError(t, err)
	var mu sync.Mutex
	var renewed []*Grant
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Keep(ctx, g, zaptest.NewLogger(t), func(g *Grant) {
			mu.Lock()
			renewed = append(renewed, g)
			mu.Unlock()
		})
	}()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(renewed) >= 2
	}, 30*time.Second, 50*time.Millisecond)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, "g-2", renewed[0].ID, "the failed renewal was retried")
	require.Equal(t, "g-3", renewed[1].ID)
	for _, r := range gs.Requests() {
		require.Equal(t, "Bearer jwt", r.Auth)
	}
}

func TestRenewDelay(t *testing.T) {
	now := time.Now()
	require.Equal(t, 40*time.Minute, renewDelay(now.Add(time.Hour), now))
	require.Equal(t, 80*time.Second, renewDelay(now.Add(2*time.Minute), now))
	require.Equal(t, 30*time.Second, renewDelay(now.Add(time.Minute), now), "at least 30s of lead")
	require.Equal(t, 10*time.Second, renewDelay(now.Add(30*time.Second), now))
	require.Equal(t, time.Second, renewDelay(now.Add(-time.Minute), now), "expired: at once, but not in a loop")
}

func TestFamily(t *testing.T) {
	for addr, want := range map[string]string{"127.0.0.1:5432": "tcp4", "[::1]:5432": "tcp6", "[::ffff:10.0.0.1]:5432": "tcp4", "localhost:5432": "tcp"} {
		got, err := Family(context.Background(), addr)
		require.NoError(t, err, addr)
		if want == "tcp" { // whichever family the resolver lists first
			require.Contains(t, []string{"tcp4", "tcp6"}, got)
			continue
		}
		require.Equal(t, want, got, addr)
	}
	_, err := Family(context.Background(), "db.example.com")
	require.ErrorContains(t, err, "HOST:PORT")
}

// TestKeepStopsOnReplay: a 409 (the token was used before, as an
// environment token always is at its second use) ends Keep with one
// clear line instead of a retry loop.
func TestKeepStopsOnReplay(t *testing.T) {
	gs := startGrantServer(t, func(n int, _ grantRequest) (int, any, http.Header) {
		if n == 0 {
			return http.StatusCreated, grantFor(time.Now().Add(3*time.Second), "g-0"), nil
		}
		return http.StatusConflict, map[string]string{"error": "this token was used before; get a fresh one"}, nil
	})
	c, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: EnvToken{Name: "T", Getenv: staticEnv(map[string]string{"T": "jwt"})}})
	require.NoError(t, err)
	g, err := c.Request(context.Background())
	require.NoError(t, err)
	core, logs := observer.New(zapcore.DebugLevel)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Keep(context.Background(), g, zap.New(core), func(*Grant) { t.Error("renewed with a replayed token") })
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Keep kept retrying a replayed token")
	}
	require.Len(t, gs.Requests(), 2, "one renewal attempt, no retries")
	stopped := logs.FilterMessageSnippet("grant renewal stopped").All()
	require.Len(t, stopped, 1)
	require.Contains(t, stopped[0].Message, "cannot be renewed")
	require.Equal(t, "g-0", stopped[0].ContextMap()["grant_id"])
}

// TestLocalAddr: the request leaves from the address asked for, which
// must be of the pinned family.
func TestLocalAddr(t *testing.T) {
	gs := startGrantServer(t, func(int, grantRequest) (int, any, http.Header) {
		return 201, grantFor(time.Now().Add(time.Hour), "x"), nil
	})
	tok := EnvToken{Name: "T", Getenv: staticEnv(map[string]string{"T": "jwt"})}
	c, err := New(Config{URL: gs.URL, RootCAs: gs.roots(), Tokens: tok, Network: "tcp4", LocalAddr: netip.MustParseAddr("127.0.0.7")})
	require.NoError(t, err)
	_, err = c.Request(context.Background())
	require.NoError(t, err)
	reqs := gs.Requests()
	require.Len(t, reqs, 1)
	host, _, err := net.SplitHostPort(reqs[0].Remote)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.7", host)

	_, err = New(Config{URL: gs.URL, Tokens: tok, Network: "tcp6", LocalAddr: netip.MustParseAddr("127.0.0.7")})
	require.ErrorContains(t, err, "not of the family")
}
