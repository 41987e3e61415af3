package grantapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grantapi/granttest"
	"github.com/pgwarden/pgwarden/internal/grantclient"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
	"github.com/pgwarden/pgwarden/internal/oidcauth/oidctest"
)

// answer is one response, decoded.
type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func post(t *testing.T, c *http.Client, url, auth string, body []byte) answer {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(http.MethodPost, url+grantapi.Path, rd)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(data)}
	require.NoError(t, json.Unmarshal(data, &a.body), "every answer is JSON: %q", data)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	return a
}

func bearer(tok string) string { return "Bearer " + tok }

func TestSelfGrantEndToEnd(t *testing.T) {
	t.Parallel()
	for _, remote := range []bool{false, true} {
		name := "jwks file"
		if remote {
			name = "jwks server"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := granttest.Start(t, granttest.Options{Remote: remote})
			c := e.Client("127.0.0.2")
			a := post(t, c, e.URL, bearer(e.Token(t, "RS256")), []byte(`{"ttl": "20m"}`))
			require.Equal(t, http.StatusCreated, a.status, a.raw)
			require.Equal(t, "127.0.0.2", a.body["source"], "the grant is for the TCP peer")
			require.Equal(t, []any{"migrator"}, a.body["users"])
			require.Equal(t, []any{"shop"}, a.body["databases"])
			require.Equal(t, "repo:acme/app:environment:production", a.body["created_by"])
			require.Equal(t, "oidc", a.body["via"])
			require.Equal(t, `oidc rule "deploy"`, a.body["rule"])
			require.Equal(t, false, a.body["extended"])
			require.Contains(t, a.body["reason"], "run_id 4242")
			require.Equal(t, map[string]any{"repository_id": "123456", "ref": "refs/heads/main"}, a.body["claims"])
			until, err := time.Parse(time.RFC3339, a.body["until"].(string))
			require.NoError(t, err)
			require.True(t, until.Equal(e.Clock.Now().Add(20*time.Minute)), "until %s", until)
			id := a.body["id"].(string)

			g, ok := e.Registry.Covering("main", netip.MustParseAddr("127.0.0.2"))
			require.True(t, ok)
			require.Equal(t, id, g.ID)
			_, ok = e.Registry.Covering("main", netip.MustParseAddr("127.0.0.3"))
			require.False(t, ok, "another source is not covered")

			// An ES256 token for the same source extends the grant, capped at
			// the rule's max-ttl.
			a = post(t, c, e.URL, bearer(e.Token(t, "ES256")), []byte(`{"ttl": "5h"}`))
			require.Equal(t, http.StatusCreated, a.status, a.raw)
			require.Equal(t, id, a.body["id"])
			require.Equal(t, true, a.body["extended"])
			until, _ = time.Parse(time.RFC3339, a.body["until"].(string))
			require.True(t, until.Equal(e.Clock.Now().Add(30*time.Minute)), "capped at max-ttl: %s", until)

			// No body: as long as the rule allows.
			a = post(t, e.Client("127.0.0.3"), e.URL, bearer(e.Token(t, "RS256")), nil)
			require.Equal(t, http.StatusCreated, a.status, a.raw)
			require.Equal(t, "127.0.0.3", a.body["source"])
			require.Empty(t, e.AuthFailures())
			require.Equal(t, []grantapi.Outcome{grantapi.OutcomeGranted, grantapi.OutcomeExtended, grantapi.OutcomeGranted}, e.Outcomes())
		})
	}
}

// TestGrantClientSpeaksTheContract drives the endpoint with the client
// that pgwarden connect and grants request use.
func TestGrantClientSpeaksTheContract(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})
	tok := e.Token(t, "RS256")
	gc, err := grantclient.New(grantclient.Config{
		URL: e.URL, TTL: "10m", HTTPClient: e.Client("127.0.0.4"),
		Tokens: grantclient.EnvToken{Name: "T", Getenv: func(string) string { return tok }},
	})
	require.NoError(t, err)
	g, err := gc.Request(context.Background())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.4", g.Source)
	require.True(t, g.Until.Equal(e.Clock.Now().Add(10*time.Minute)))
	require.Equal(t, []string{"migrator"}, g.Users)

	// The same token again: 409, with the server's reason.
	_, err = gc.Request(context.Background())
	var ae *grantclient.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusConflict, ae.Status)
	require.Contains(t, ae.Message, "used before")
}

func TestSelfGrantTokenRefusals(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})
	iss := e.Issuer
	now := e.Clock.Now()
	claims := func(mut func(map[string]any)) map[string]any {
		c := iss.Claims(e.Audience, now)
		mut(c)
		return c
	}
	good := e.Token(t, "RS256")
	tests := []struct {
		name, auth, reason string
	}{
		{"no header", "", oidcauth.ReasonMissing},
		{"basic auth", "Basic dXNlcjpwYXNz", oidcauth.ReasonMissing},
		{"empty bearer", "Bearer ", oidcauth.ReasonMissing},
		{"wrong audience", bearer(e.Token(t, "RS256", func(c map[string]any) { c["aud"] = "https://other.example" })), oidcauth.ReasonAudience},
		{"wrong issuer", bearer(e.Token(t, "RS256", func(c map[string]any) { c["iss"] = "https://gitlab.com" })), oidcauth.ReasonIssuer},
		{"expired", bearer(e.Token(t, "RS256", func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-9*time.Minute).Unix(), now.Add(-time.Minute).Unix()
		})), oidcauth.ReasonExpired},
		{"future nbf", bearer(e.Token(t, "RS256", func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() })), oidcauth.ReasonNotYetValid},
		{"alg none", bearer(oidctest.NoneToken(iss.Claims(e.Audience, now))), oidcauth.ReasonAlgorithm},
		{"HS256 with the public key", bearer(oidctest.HS256Token(iss.RSAPublicPEM(), oidctest.RSAKeyID, iss.Claims(e.Audience, now))), oidcauth.ReasonAlgorithm},
		{"unknown kid", bearer(iss.Sign(t, "RS256", "nope", iss.Claims(e.Audience, now))), oidcauth.ReasonUnknownKey},
		{"tampered claims", bearer(oidctest.Tamper(t, good, claims(func(c map[string]any) { c["repository_id"] = "999" }))), oidcauth.ReasonSignature},
		{"tampered signature", bearer(oidctest.FlipSignature(t, good)), oidcauth.ReasonSignature},
		{"garbage", "Bearer not-a-token", oidcauth.ReasonMalformed},
	}
	c := e.Client("127.0.0.5")
	for _, tc := range tests {
		a := post(t, c, e.URL, tc.auth, nil)
		require.Equal(t, http.StatusUnauthorized, a.status, "%s: %s", tc.name, a.raw)
		require.Equal(t, tc.reason, a.body["error"], tc.name)
		require.Equal(t, `Bearer error="invalid_token"`, a.header.Get("WWW-Authenticate"))
		if tok, ok := strings.CutPrefix(tc.auth, "Bearer "); ok && len(tok) > 10 {
			for _, part := range strings.Split(tok, ".") {
				if len(part) >= 10 {
					require.NotContains(t, a.raw, part[:10], "%s: nothing of the token is echoed", tc.name)
				}
			}
		}
	}
	failures := e.AuthFailures()
	require.Len(t, failures, len(tests), "every 401 is reported as a failure")
	for _, f := range failures {
		require.Equal(t, "127.0.0.5", f.String())
	}
	require.Empty(t, e.Registry.List(), "no grant from any of them")

	// A valid token no rule admits: 403, not a failed login.
	a := post(t, c, e.URL, bearer(e.Token(t, "RS256", func(c map[string]any) { c["repository_id"] = "777" })), nil)
	require.Equal(t, http.StatusForbidden, a.status)
	require.Equal(t, "no rule admits this token", a.body["error"])
	require.Len(t, e.AuthFailures(), len(tests))

	// A fork's token for another branch: 403 too.
	a = post(t, c, e.URL, bearer(e.Token(t, "RS256", func(c map[string]any) { c["ref"] = "refs/heads/evil" })), nil)
	require.Equal(t, http.StatusForbidden, a.status)

	// Replay: the first use grants, the second is 409.
	tok := e.Token(t, "ES256")
	require.Equal(t, http.StatusCreated, post(t, c, e.URL, bearer(tok), nil).status)
	a = post(t, e.Client("127.0.0.6"), e.URL, bearer(tok), nil)
	require.Equal(t, http.StatusConflict, a.status)
	require.Contains(t, a.body["error"], "used before")
	_, ok := e.Registry.Covering("main", netip.MustParseAddr("127.0.0.6"))
	require.False(t, ok, "a replayed token grants nothing to its new holder")
}

func TestSelfGrantBodies(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})
	c := e.Client("127.0.0.7")
	tests := []struct {
		name   string
		body   []byte
		status int
		want   string
	}{
		{"too large", bytes.Repeat([]byte(" "), grantapi.MaxBodyBytes+1), http.StatusRequestEntityTooLarge, "larger than 16 KiB"},
		{"not JSON", []byte(`ttl=20m`), http.StatusBadRequest, "JSON object"},
		{"array", []byte(`["20m"]`), http.StatusBadRequest, "JSON object"},
		{"unknown key", []byte(`{"ttl":"20m","source":"10.0.0.1"}`), http.StatusBadRequest, `only "ttl"`},
		{"duplicate key", []byte(`{"ttl":"1m","ttl":"9h"}`), http.StatusBadRequest, "twice"},
		{"trailing data", []byte(`{"ttl":"20m"} {"ttl":"9h"}`), http.StatusBadRequest, "after the JSON object"},
		{"number ttl", []byte(`{"ttl":1200}`), http.StatusBadRequest, "must be a string"},
		{"zero ttl", []byte(`{"ttl":"0s"}`), http.StatusBadRequest, "at least 1s"},
		{"negative ttl", []byte(`{"ttl":"-5m"}`), http.StatusBadRequest, "at least 1s"},
		{"nonsense ttl", []byte(`{"ttl":"soon"}`), http.StatusBadRequest, "at least 1s"},
		{"truncated", []byte(`{"ttl":"20m"`), http.StatusBadRequest, "not valid JSON"},
	}
	for _, tc := range tests {
		a := post(t, c, e.URL, bearer(e.Token(t, "RS256")), tc.body)
		require.Equal(t, tc.status, a.status, "%s: %s", tc.name, a.raw)
		require.Contains(t, a.body["error"], tc.want, tc.name)
	}
	require.Empty(t, e.Registry.List())
	require.Empty(t, e.AuthFailures(), "a bad body is not a failed login")

	// Whitespace-only and {} bodies ask for the longest grant.
	for _, body := range []string{"  \n", "{}"} {
		a := post(t, c, e.URL, bearer(e.Token(t, "RS256")), []byte(body))
		require.Equal(t, http.StatusCreated, a.status, a.raw)
	}
}

func TestSelfGrantMethodAndPath(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})
	c := e.Client("127.0.0.8")
	resp, err := c.Get(e.URL + grantapi.Path)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Equal(t, "POST", resp.Header.Get("Allow"))
	resp, err = c.Post(e.URL+"/v1/grants", "application/json", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestSelfGrantFloodIsRateLimited(t *testing.T) {
	t.Parallel()
	var verified atomic.Int32
	e := granttest.Start(t, granttest.Options{Handler: func(c *grantapi.Config) {
		c.Rate, c.Burst = rate.Every(10*time.Second), 5
		inner := c.Verifier
		c.Verifier = countingVerifier{inner, &verified}
	}})
	c := e.Client("127.0.0.9")
	var statuses []int
	for range 20 {
		a := post(t, c, e.URL, "Bearer junk", nil)
		statuses = append(statuses, a.status)
		if a.status == http.StatusTooManyRequests {
			require.Equal(t, "10", a.header.Get("Retry-After"))
			require.Contains(t, a.body["error"], "too many")
		}
	}
	require.Equal(t, []int{401, 401, 401, 401, 401}, statuses[:5], "the burst passes")
	for _, s := range statuses[5:] {
		require.Equal(t, http.StatusTooManyRequests, s)
	}
	require.EqualValues(t, 5, verified.Load(), "refused requests never reach the signature check")

	// Another source has its own bucket; the clock refills this one.
	require.Equal(t, http.StatusCreated, post(t, e.Client("127.0.0.10"), e.URL, bearer(e.Token(t, "RS256")), nil).status)
	e.Clock.Advance(10 * time.Second)
	require.Equal(t, http.StatusCreated, post(t, c, e.URL, bearer(e.Token(t, "RS256")), nil).status)
}

// countingVerifier counts verifications.
type countingVerifier struct {
	grantapi.TokenVerifier
	n *atomic.Int32
}

func (v countingVerifier) Verify(ctx context.Context, raw string) (*oidcauth.Token, error) {
	v.n.Add(1)
	return v.TokenVerifier.Verify(ctx, raw)
}

// TestBanAndFailedTokens wires the endpoint to a real jail: 401s count as
// failed logins, and a banned source gets no grant, valid token or not.
func TestBanAndFailedTokens(t *testing.T) {
	t.Parallel()
	jcfg := acl.DefaultJailConfig()
	jcfg.MaxRetry, jcfg.Logger = 3, zap.NewNop()
	jail, err := acl.NewJail(jcfg)
	require.NoError(t, err)
	defer jail.Close()
	e := granttest.Start(t, granttest.Options{Handler: func(c *grantapi.Config) {
		c.Banned = jail.Banned
		c.AuthFailed = func(ip netip.Addr) { jail.Failed(ip, acl.Failure{}) }
	}})
	c := e.Client("127.0.0.11")
	for range 3 {
		require.Equal(t, http.StatusUnauthorized, post(t, c, e.URL, "Bearer junk", nil).status)
	}
	require.True(t, jail.Banned(netip.MustParseAddr("127.0.0.11")))
	a := post(t, c, e.URL, bearer(e.Token(t, "RS256")), nil)
	require.Equal(t, http.StatusForbidden, a.status)
	require.Equal(t, "this address is banned", a.body["error"])
	_, ok := e.Registry.Covering("main", netip.MustParseAddr("127.0.0.11"))
	require.False(t, ok, "the grant endpoint is no way around a ban")

	// Another address is unaffected.
	require.Equal(t, http.StatusCreated, post(t, e.Client("127.0.0.12"), e.URL, bearer(e.Token(t, "RS256")), nil).status)
}

func TestSelfGrantUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("issuer keys unreachable", func(t *testing.T) {
		t.Parallel()
		e := granttest.Start(t, granttest.Options{Remote: true})
		e.KeyServer.Fail(true)
		a := post(t, e.Client("127.0.0.13"), e.URL, bearer(e.Token(t, "RS256")), nil)
		require.Equal(t, http.StatusServiceUnavailable, a.status, a.raw)
		require.Equal(t, oidcauth.ReasonUnavailable, a.body["error"])
		require.NotEmpty(t, a.header.Get("Retry-After"))
		require.Empty(t, e.AuthFailures(), "the issuer being down is nobody's failed login")
	})
	t.Run("replay cache full", func(t *testing.T) {
		t.Parallel()
		var rc *oidcauth.ReplayCache
		e := granttest.Start(t, granttest.Options{Handler: func(c *grantapi.Config) {
			rc = oidcauth.NewReplayCache(1, c.Now)
			c.Replay = rc
		}})
		c := e.Client("127.0.0.14")
		require.Equal(t, http.StatusCreated, post(t, c, e.URL, bearer(e.Token(t, "RS256")), nil).status)
		a := post(t, c, e.URL, bearer(e.Token(t, "RS256")), nil)
		require.Equal(t, http.StatusServiceUnavailable, a.status, a.raw)
		require.Equal(t, "331", a.header.Get("Retry-After"), "just past the remembered token's last valid instant (exp 5m + 30s leeway)")
	})
	t.Run("grant table full", func(t *testing.T) {
		t.Parallel()
		e := granttest.Start(t, granttest.Options{Registry: func(c *grants.Config) { c.MaxGrants = 1 }})
		require.Equal(t, http.StatusCreated, post(t, e.Client("127.0.0.15"), e.URL, bearer(e.Token(t, "RS256")), nil).status)
		tok := e.Token(t, "RS256")
		c := e.Client("127.0.0.16")
		a := post(t, c, e.URL, bearer(tok), nil)
		require.Equal(t, http.StatusServiceUnavailable, a.status, a.raw)
		require.Contains(t, a.body["error"], "too many active grants")
		// Nothing was granted, so the token was not spent.
		_, err := e.Registry.Revoke("127.0.0.15", grants.RevokeOptions{})
		require.NoError(t, err)
		a = post(t, c, e.URL, bearer(tok), nil)
		require.Equal(t, http.StatusCreated, a.status, a.raw)
	})
}

func TestServerTLSOnlyAndHTTP11(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})

	// Plain HTTP to the TLS port grants nothing.
	resp, err := http.Post("http://"+e.Addr+grantapi.Path, "application/json", nil)
	if err == nil {
		resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	}

	// A client offering only the postgres ALPN (what the gateway's config
	// carried) is refused; an HTTPS client gets http/1.1 without being
	// asked for a certificate.
	_, err = tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: e.Roots(), NextProtos: []string{"postgresql"}})
	require.Error(t, err)
	conn, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: e.Roots(), NextProtos: []string{"h2", "http/1.1"}})
	require.NoError(t, err)
	require.Equal(t, "http/1.1", conn.ConnectionState().NegotiatedProtocol)
	conn.Close()
	_, err = tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: e.Roots(), MaxVersion: tls.VersionTLS11})
	require.Error(t, err, "TLS 1.1 is refused")
	require.Empty(t, e.Registry.List())
}

func TestServerHeaderDeadline(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{Server: func(c *grantapi.ServerConfig) {
		c.ReadHeaderTimeout = 300 * time.Millisecond
	}})
	// A silent client is dropped by the header deadline (which also bounds
	// the TLS handshake), long before our own read deadline.
	silent, err := net.Dial("tcp", e.Addr)
	require.NoError(t, err)
	defer silent.Close()
	require.NoError(t, silent.SetReadDeadline(time.Now().Add(60*time.Second)))
	_, err = silent.Read(make([]byte, 1))
	require.Error(t, err)
	var ne net.Error
	require.False(t, errorsAsTimeout(err, &ne), "the server closed it: %v", err)

	// So does one that finished TLS but sends no request.
	idle, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: e.Roots()})
	require.NoError(t, err)
	defer idle.Close()
	require.NoError(t, idle.SetReadDeadline(time.Now().Add(60*time.Second)))
	_, err = idle.Read(make([]byte, 1))
	require.Error(t, err)
	require.False(t, errorsAsTimeout(err, &ne), "the server closed it: %v", err)
}

func TestServerConnectionCap(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{Server: func(c *grantapi.ServerConfig) {
		c.ReadHeaderTimeout, c.MaxConns = time.Minute, 2
	}})
	// Two held connections fill the cap: a third is not served while they
	// stay (it cannot finish its handshake, whatever the wait).
	h1, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: e.Roots()})
	require.NoError(t, err)
	defer h1.Close()
	h2, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: e.Roots()})
	require.NoError(t, err)
	defer h2.Close()
	raw, err := net.Dial("tcp", e.Addr)
	require.NoError(t, err)
	defer raw.Close()
	third := tls.Client(raw, &tls.Config{RootCAs: e.Roots(), ServerName: "127.0.0.1"})
	require.NoError(t, third.SetDeadline(time.Now().Add(300*time.Millisecond)))
	require.Error(t, third.Handshake(), "no handshake while the cap is full")
	_ = raw.Close()
	// Once one holder leaves, a new client is served.
	h1.Close()
	a := post(t, e.Client("127.0.0.17"), e.URL, bearer(e.Token(t, "RS256")), nil)
	require.Equal(t, http.StatusCreated, a.status, a.raw)
}

func errorsAsTimeout(err error, ne *net.Error) bool {
	if e, ok := err.(net.Error); ok {
		*ne = e
		return e.Timeout()
	}
	return false
}

func TestNewServerAndHandlerRefuse(t *testing.T) {
	t.Parallel()
	_, err := grantapi.NewServer(grantapi.ServerConfig{Handler: http.NotFoundHandler()})
	require.ErrorContains(t, err, "TLS")
	_, err = grantapi.NewServer(grantapi.ServerConfig{Handler: http.NotFoundHandler(), TLS: &tls.Config{}})
	require.ErrorContains(t, err, "certificate")
	_, err = grantapi.NewHandler(grantapi.Config{})
	require.ErrorContains(t, err, "no token verifier")
}
