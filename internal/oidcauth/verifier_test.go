package oidcauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fakeclock"
	"github.com/pgwarden/pgwarden/internal/oidcauth/oidctest"
)

const testAudience = "https://db.example.com:8443"

func newFakeClock() *fakeclock.Clock { return fakeclock.New(time.Now().Truncate(time.Second)) }

// staticVerifier verifies tokens of iss against its key set in a file.
func staticVerifier(t testing.TB, clock *fakeclock.Clock) (*Verifier, *oidctest.Issuer) {
	t.Helper()
	iss := oidctest.NewIssuer(t, "https://token.actions.githubusercontent.com")
	v, err := NewVerifier(Config{Issuer: iss.URL, Audience: testAudience, JWKS: iss.WriteJWKS(t), Now: clock.Now})
	require.NoError(t, err)
	return v, iss
}

// requireRefused asserts a *VerifyError with reason, and that nothing of
// the token is in the public text.
func requireRefused(t testing.TB, err error, reason string, token string) {
	t.Helper()
	var ve *VerifyError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, reason, ve.Reason, "cause: %v", ve.Err)
	if len(token) > 8 {
		for _, part := range strings.Split(token, ".") {
			if len(part) > 8 {
				require.NotContains(t, ve.Reason, part[:8])
			}
		}
	}
}

func TestVerifyValidTokens(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	v, iss := staticVerifier(t, clock)
	for _, alg := range []string{"RS256", "ES256"} {
		claims := iss.Claims(testAudience, clock.Now())
		tok, err := v.Verify(context.Background(), iss.Sign(t, alg, "", claims))
		require.NoError(t, err, alg)
		require.Equal(t, "repo:acme/app:environment:production", tok.Subject)
		require.Equal(t, claims["jti"], tok.JTI)
		require.Equal(t, []string{testAudience}, tok.Audience)
		require.Equal(t, "123456", tok.Claims["repository_id"])
		require.Equal(t, json.Number("987"), tok.Claims["repository_owner_id"], "numbers keep their text")
		// exp is 5 minutes away: the jti is kept until exp + leeway.
		require.Equal(t, clock.Now().Add(5*time.Minute+DefaultLeeway), tok.ReplayUntil)
	}

	// aud may be a list containing the audience; a token valid for an
	// hour is remembered only until iat + MaxAge, when it stops verifying.
	claims := iss.Claims(testAudience, clock.Now())
	claims["aud"] = []string{"other", testAudience}
	claims["exp"] = clock.Now().Add(time.Hour).Unix()
	tok, err := v.Verify(context.Background(), iss.Sign(t, "RS256", "", claims))
	require.NoError(t, err)
	require.Equal(t, clock.Now().Add(DefaultMaxAge), tok.ReplayUntil)

	// Fractional dates are NumericDates too.
	claims = iss.Claims(testAudience, clock.Now())
	claims["iat"] = float64(clock.Now().Unix()) + 0.5
	_, err = v.Verify(context.Background(), iss.Sign(t, "ES256", "", claims))
	require.NoError(t, err)
}

func TestVerifyRefusals(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	v, iss := staticVerifier(t, clock)
	now := clock.Now()
	with := func(mut func(c map[string]any)) map[string]any {
		c := iss.Claims(testAudience, now)
		mut(c)
		return c
	}
	good := iss.Sign(t, "RS256", "", iss.Claims(testAudience, now))
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	tests := []struct {
		name   string
		token  string
		reason string
	}{
		{"empty", "", ReasonMissing},
		{"too large", strings.Repeat("a", MaxTokenBytes+1), ReasonTooLarge},
		{"two parts", "abc.def", ReasonMalformed},
		{"five parts (JWE)", "a.b.c.d.e", ReasonMalformed},
		{"JSON serialization", `{"payload":"x","signatures":[]}`, ReasonMalformed},
		{"whitespace inside", good[:10] + " " + good[10:], ReasonMalformed},
		{"header not JSON", "bm90IGpzb24.e30.c2ln", ReasonMalformed},
		{"alg none", oidctest.NoneToken(iss.Claims(testAudience, now)), ReasonAlgorithm},
		{"alg none, capitalised", oidctest.Compact(map[string]any{"alg": "None"}, iss.Claims(testAudience, now), func([]byte) []byte { return nil }), ReasonAlgorithm},
		{"HS256 keyed with the public key", oidctest.HS256Token(iss.RSAPublicPEM(), oidctest.RSAKeyID, iss.Claims(testAudience, now)), ReasonAlgorithm},
		{"RS384", oidctest.Compact(map[string]any{"alg": "RS384", "kid": oidctest.RSAKeyID}, iss.Claims(testAudience, now), iss.RSASign), ReasonAlgorithm},
		{"unknown kid", iss.Sign(t, "RS256", "rotated-away", iss.Claims(testAudience, now)), ReasonUnknownKey},
		{"other key, known kid", oidctest.SignWith(t, otherKey, "RS256", oidctest.RSAKeyID, iss.Claims(testAudience, now)), ReasonSignature},
		{"ES256 under the RSA kid", iss.Sign(t, "ES256", oidctest.RSAKeyID, iss.Claims(testAudience, now)), ReasonSignature},
		{"tampered payload", oidctest.Tamper(t, good, with(func(c map[string]any) { c["repository_id"] = "666" })), ReasonSignature},
		{"flipped signature", oidctest.FlipSignature(t, good), ReasonSignature},
		{"wrong issuer", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["iss"] = "https://evil.example" })), ReasonIssuer},
		{"wrong audience", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["aud"] = "pgwarden-staging" })), ReasonAudience},
		{"audience list without ours", iss.Sign(t, "ES256", "", with(func(c map[string]any) { c["aud"] = []string{"a", "b"} })), ReasonAudience},
		{"no audience", iss.Sign(t, "ES256", "", with(func(c map[string]any) { delete(c, "aud") })), ReasonAudience},
		{"expired beyond leeway", iss.Sign(t, "RS256", "", with(func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-5*time.Minute).Unix(), now.Add(-31*time.Second).Unix()
		})), ReasonExpired},
		{"nbf beyond leeway", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["nbf"] = now.Add(31 * time.Second).Unix() })), ReasonNotYetValid},
		{"iat in the future", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() })), ReasonIssuedFuture},
		{"iat too old", iss.Sign(t, "RS256", "", with(func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-10*time.Minute-time.Second).Unix(), now.Add(time.Hour).Unix()
		})), ReasonTooOld},
		{"no exp", iss.Sign(t, "RS256", "", with(func(c map[string]any) { delete(c, "exp") })), ReasonClaims},
		{"exp a string", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["exp"] = "tomorrow" })), ReasonClaims},
		{"no iat", iss.Sign(t, "RS256", "", with(func(c map[string]any) { delete(c, "iat") })), ReasonClaims},
		{"nbf a string", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["nbf"] = "now" })), ReasonClaims},
		{"huge exp", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["exp"] = 1e300 })), ReasonClaims},
		{"no jti", iss.Sign(t, "RS256", "", with(func(c map[string]any) { delete(c, "jti") })), ReasonNoJTI},
		{"numeric jti", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["jti"] = 42 })), ReasonNoJTI},
		{"long jti", iss.Sign(t, "RS256", "", with(func(c map[string]any) { c["jti"] = strings.Repeat("j", 300) })), ReasonClaims},
		{"no sub", iss.Sign(t, "RS256", "", with(func(c map[string]any) { delete(c, "sub") })), ReasonNoSubject},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tc.token)
			requireRefused(t, err, tc.reason, tc.token)
		})
	}

	// Inside the leeway, exp and nbf still pass.
	_, err = v.Verify(context.Background(), iss.Sign(t, "RS256", "", with(func(c map[string]any) {
		c["iat"], c["exp"], c["nbf"] = now.Add(-time.Minute).Unix(), now.Add(-29*time.Second).Unix(), now.Add(29*time.Second).Unix()
	})))
	require.NoError(t, err)
}

// TestKeySetRefusesConfusionDirectly checks the key set on its own: even a
// caller that skipped the header check never gets an HS256 or none token
// verified.
func TestKeySetRefusesConfusionDirectly(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	v, iss := staticVerifier(t, clock)
	for _, tok := range []string{
		oidctest.HS256Token(iss.RSAPublicPEM(), oidctest.RSAKeyID, iss.Claims(testAudience, clock.Now())),
		oidctest.NoneToken(iss.Claims(testAudience, clock.Now())),
	} {
		_, err := v.keys.VerifySignature(context.Background(), tok)
		require.Error(t, err)
	}
}

func TestNewVerifierConfigErrors(t *testing.T) {
	t.Parallel()
	iss := oidctest.NewIssuer(t, "https://issuer.example")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))
		return p
	}
	private, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: iss.EC, KeyID: "k"}}})
	require.NoError(t, err)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	smallSet, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &small.PublicKey, KeyID: "k"}}})
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384Set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p384.PublicKey, KeyID: "k"}}})
	octSet := []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k"}]}`)

	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no issuer", Config{Audience: "a", JWKS: iss.WriteJWKS(t)}, "issuer: required"},
		{"no audience", Config{Issuer: iss.URL, JWKS: iss.WriteJWKS(t)}, "audience: required"},
		{"missing file", Config{Issuer: iss.URL, Audience: "a", JWKS: filepath.Join(dir, "nope.json")}, "reading the key file"},
		{"not a key set", Config{Issuer: iss.URL, Audience: "a", JWKS: write("bad.json", []byte("[1,2"))}, "decoding key set"},
		{"empty key set", Config{Issuer: iss.URL, Audience: "a", JWKS: write("empty.json", []byte(`{"keys":[]}`))}, "no RSA"},
		{"private key", Config{Issuer: iss.URL, Audience: "a", JWKS: write("priv.json", private)}, "publish only the public key"},
		{"small RSA", Config{Issuer: iss.URL, Audience: "a", JWKS: write("small.json", smallSet)}, "1024 bits"},
		{"P-384", Config{Issuer: iss.URL, Audience: "a", JWKS: write("p384.json", p384Set)}, "only P-256"},
		{"symmetric", Config{Issuer: iss.URL, Audience: "a", JWKS: write("oct.json", octSet)}, "symmetric"},
		{"plain http URL", Config{Issuer: iss.URL, Audience: "a", JWKS: "http://keys.example/jwks"}, "use https"},
		{"discovery from http", Config{Issuer: "http://issuer.example", Audience: "a"}, "OIDC discovery needs an https issuer"},
		{"negative leeway", Config{Issuer: iss.URL, Audience: "a", JWKS: iss.WriteJWKS(t), Leeway: -time.Second}, "leeway: must be positive"},
	}
	for _, tc := range tests {
		_, err := NewVerifier(tc.cfg)
		require.ErrorContains(t, err, tc.wantErr, tc.name)
	}
	// Loopback http and https are fine, and nothing is fetched yet.
	for _, u := range []string{"http://127.0.0.1:1/jwks", "http://[::1]:1/jwks", "http://localhost:1/jwks", "https://keys.example/jwks"} {
		_, err := NewVerifier(Config{Issuer: iss.URL, Audience: "a", JWKS: u})
		require.NoError(t, err, u)
	}
}

// remoteVerifier verifies against a served key set with a fake clock.
func remoteVerifier(t testing.TB, srv *oidctest.Server, clock *fakeclock.Clock, jwks string) *Verifier {
	t.Helper()
	v, err := NewVerifier(Config{Issuer: srv.Issuer.URL, Audience: testAudience, JWKS: jwks, Now: clock.Now})
	require.NoError(t, err)
	return v
}

// remoteEnv is a key-set server and a verifier fetching from it.
func remoteEnv(t testing.TB) (*oidctest.Server, *fakeclock.Clock, *Verifier, *oidctest.Issuer) {
	t.Helper()
	srv := oidctest.Serve(t)
	clock := newFakeClock()
	return srv, clock, remoteVerifier(t, srv, clock, srv.URL+"/jwks"), srv.Issuer
}

func TestRemoteKeySetFloodOfUnknownKids(t *testing.T) {
	t.Parallel()
	srv, clock, v, iss := remoteEnv(t)
	ctx := context.Background()

	_, err := v.Verify(ctx, iss.Sign(t, "RS256", "", iss.Claims(testAudience, clock.Now())))
	require.NoError(t, err)
	require.EqualValues(t, 1, srv.JWKSRequests(), "the first token fetched the set")

	flood := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				tok := iss.Sign(t, "RS256", oidctest.RandomID(), iss.Claims(testAudience, clock.Now()))
				_, err := v.Verify(ctx, tok)
				var ve *VerifyError
				if !errors.As(err, &ve) || ve.Reason != ReasonUnknownKey {
					t.Errorf("random kid: %v", err)
				}
			})
		}
		wg.Wait()
	}
	// Within the cooldown: no fetch at all.
	flood(200)
	require.EqualValues(t, 1, srv.JWKSRequests(), "random kids inside the cooldown fetch nothing")

	// After the cooldown: one fetch for the whole flood.
	clock.Advance(DefaultFetchCooldown)
	flood(100)
	require.EqualValues(t, 2, srv.JWKSRequests(), "one fetch per cooldown, whatever arrives")

	// Known kids never fetch, even bad signatures.
	clock.Advance(DefaultFetchCooldown)
	for range 20 {
		_, err := v.Verify(ctx, oidctest.FlipSignature(t, iss.Sign(t, "ES256", "", iss.Claims(testAudience, clock.Now()))))
		requireRefused(t, err, ReasonSignature, "")
	}
	require.EqualValues(t, 2, srv.JWKSRequests())
	require.Equal(t, 2, v.keys.fetchCount())
}

func TestRemoteKeySetNegativeCacheAndRotation(t *testing.T) {
	t.Parallel()
	srv, clock, v, iss := remoteEnv(t)
	ctx := context.Background()
	require.NoError(t, v.Prefetch(ctx))
	require.EqualValues(t, 1, srv.JWKSRequests())

	// A kid missing from a fresh fetch is remembered: repeating it after
	// the cooldown fetches nothing until the negative entry expires.
	clock.Advance(DefaultFetchCooldown)
	_, err := v.Verify(ctx, iss.Sign(t, "RS256", "misconfigured", iss.Claims(testAudience, clock.Now())))
	requireRefused(t, err, ReasonUnknownKey, "")
	require.EqualValues(t, 2, srv.JWKSRequests())
	clock.Advance(DefaultFetchCooldown)
	_, err = v.Verify(ctx, iss.Sign(t, "RS256", "misconfigured", iss.Claims(testAudience, clock.Now())))
	requireRefused(t, err, ReasonUnknownKey, "")
	require.EqualValues(t, 2, srv.JWKSRequests(), "negative cache hit")

	// The issuer rotates in a new key; a token signed with it is verified
	// after one fetch.
	newKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	srv.SetJWKS(iss.JWKSWith(jose.JSONWebKey{Key: &newKey.PublicKey, KeyID: "ec-2", Algorithm: "ES256", Use: "sig"}))
	tok := oidctest.SignWith(t, newKey, "ES256", "ec-2", iss.Claims(testAudience, clock.Now()))
	_, err = v.Verify(ctx, tok)
	require.NoError(t, err)
	require.EqualValues(t, 3, srv.JWKSRequests())

	// The fetch cleared the negative cache; the bad kid may fetch again
	// once, after the cooldown.
	clock.Advance(DefaultNegativeTTL)
	_, err = v.Verify(ctx, iss.Sign(t, "RS256", "misconfigured", iss.Claims(testAudience, clock.Now())))
	requireRefused(t, err, ReasonUnknownKey, "")
	require.EqualValues(t, 4, srv.JWKSRequests())
}

func TestRemoteKeySetIssuerDown(t *testing.T) {
	t.Parallel()
	srv, clock, v, iss := remoteEnv(t)
	ctx := context.Background()

	srv.Fail(true)
	require.Error(t, v.Prefetch(ctx))
	_, err := v.Verify(ctx, iss.Sign(t, "RS256", "", iss.Claims(testAudience, clock.Now())))
	var ve *VerifyError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, ReasonUnavailable, ve.Reason)
	require.True(t, ve.Unavailable, "not the client's fault")
	require.EqualValues(t, 1, srv.JWKSRequests(), "the cooldown applies to failures too")

	srv.Fail(false)
	clock.Advance(DefaultFetchCooldown)
	_, err = v.Verify(ctx, iss.Sign(t, "RS256", "", iss.Claims(testAudience, clock.Now())))
	require.NoError(t, err)

	// Once the keys are old, the next token refreshes them; if the issuer
	// is down then, the known keys keep working.
	srv.Fail(true)
	clock.Advance(DefaultRefreshInterval)
	_, err = v.Verify(ctx, iss.Sign(t, "ES256", "", iss.Claims(testAudience, clock.Now())))
	require.NoError(t, err)
	require.EqualValues(t, 3, srv.JWKSRequests())
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	srv := oidctest.Serve(t)
	clock := newFakeClock()
	v := remoteVerifier(t, srv, clock, "")
	iss := srv.Issuer
	for range 3 {
		_, err := v.Verify(context.Background(), iss.Sign(t, "ES256", "", iss.Claims(testAudience, clock.Now())))
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, srv.DiscoveryRequests())
	require.EqualValues(t, 1, srv.JWKSRequests())

	// A discovery document for another issuer is refused.
	v2, err := NewVerifier(Config{Issuer: srv.URL + "/other", Audience: testAudience, Now: clock.Now})
	require.NoError(t, err)
	err = v2.Prefetch(context.Background())
	require.Error(t, err)
}

// TestFetchSurvivesCallerCancel: a client that hangs up while its request
// fetches the key set does not abort the fetch, so it cannot keep the keys
// from everyone else for a cooldown.
func TestFetchSurvivesCallerCancel(t *testing.T) {
	t.Parallel()
	iss := oidctest.NewIssuer(t, "https://issuer.example")
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(started) })
		<-release
		_, _ = w.Write(iss.JWKS())
	})}
	ln := listenLoopback(t)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	clock := newFakeClock()
	v, err := NewVerifier(Config{Issuer: iss.URL, Audience: testAudience, JWKS: "http://" + ln.Addr().String() + "/jwks", Now: clock.Now})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := v.Verify(ctx, iss.Sign(t, "RS256", "", iss.Claims(testAudience, clock.Now())))
		done <- err
	}()
	<-started
	cancel()
	close(release)
	<-done // whatever the hung-up caller got
	_, err = v.Verify(context.Background(), iss.Sign(t, "RS256", "", iss.Claims(testAudience, clock.Now())))
	require.NoError(t, err, "the fetch completed and its keys are used")
	require.Equal(t, 1, v.keys.fetchCount())
}

func TestCheckFetchURL(t *testing.T) {
	t.Parallel()
	for u, ok := range map[string]bool{
		"https://token.actions.githubusercontent.com/.well-known/jwks": true,
		"http://127.0.0.1:8080/jwks":                                   true,
		"http://[::ffff:127.0.0.1]:8080/jwks":                          true,
		"http://keys.example/jwks":                                     false,
		"ftp://keys.example/jwks":                                      false,
		"/etc/jwks.json":                                               false,
		"":                                                             false,
	} {
		err := checkFetchURL(u)
		require.Equal(t, ok, err == nil, fmt.Sprintf("%q: %v", u, err))
	}
}
