// Package oidctest mints CI-style OIDC tokens for tests: an issuer with an
// RSA and an ECDSA key (generated per test process, never committed), its
// JWKS as a file or served over HTTP on 127.0.0.1 with a request counter,
// and the malformed tokens attackers send (alg none, HS256 keyed with the
// public key, tampered signatures).
package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key ids of the issuer's keys.
const (
	RSAKeyID = "rsa-1"
	ECKeyID  = "ec-1"
)

var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
	keysErr  error
)

// keys generates the process's test keys once: RSA generation is slow
// under the race detector.
func keys(t testing.TB) (*rsa.PrivateKey, *ecdsa.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		if rsaKey, keysErr = rsa.GenerateKey(rand.Reader, 2048); keysErr != nil {
			return
		}
		ecKey, keysErr = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	})
	if keysErr != nil {
		t.Fatalf("generating test keys: %v", keysErr)
	}
	return rsaKey, ecKey
}

// Issuer signs tokens as URL.
type Issuer struct {
	URL string
	RSA *rsa.PrivateKey
	EC  *ecdsa.PrivateKey
}

// NewIssuer returns an issuer named url with the process's test keys.
func NewIssuer(t testing.TB, url string) *Issuer {
	r, e := keys(t)
	return &Issuer{URL: url, RSA: r, EC: e}
}

// JWKS is the issuer's public key set.
func (i *Issuer) JWKS() []byte {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &i.RSA.PublicKey, KeyID: RSAKeyID, Algorithm: string(jose.RS256), Use: "sig"},
		{Key: &i.EC.PublicKey, KeyID: ECKeyID, Algorithm: string(jose.ES256), Use: "sig"},
	}}
	data, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return data
}

// WriteJWKS writes the key set to a file in a temp dir and returns its path.
func (i *Issuer) WriteJWKS(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(p, i.JWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// RSAPublicPEM is the RSA public key as PEM: the "secret" of the HS256
// key-confusion attack.
func (i *Issuer) RSAPublicPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(&i.RSA.PublicKey)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// Claims returns a GitHub-like claim set for aud, issued now, valid for
// five minutes, with a fresh jti.
func (i *Issuer) Claims(aud string, now time.Time) map[string]any {
	return map[string]any{
		"iss":                 i.URL,
		"aud":                 aud,
		"sub":                 "repo:acme/app:environment:production",
		"jti":                 RandomID(),
		"iat":                 now.Unix(),
		"nbf":                 now.Add(-5 * time.Second).Unix(),
		"exp":                 now.Add(5 * time.Minute).Unix(),
		"repository":          "acme/app",
		"repository_id":       "123456",
		"repository_owner_id": 987,
		"ref":                 "refs/heads/main",
		"environment":         "production",
		"run_id":              "4242",
	}
}

// Sign signs claims with the RSA key (alg "RS256") or the EC key
// ("ES256"), under kid (the key's own id when kid is "").
func (i *Issuer) Sign(t testing.TB, alg string, kid string, claims map[string]any) string {
	t.Helper()
	var key any
	switch alg {
	case "RS256":
		key = i.RSA
		if kid == "" {
			kid = RSAKeyID
		}
	case "ES256":
		key = i.EC
		if kid == "" {
			kid = ECKeyID
		}
	default:
		t.Fatalf("oidctest: Sign does not do %s", alg)
	}
	return SignWith(t, key, alg, kid, claims)
}

// SignWith signs claims with any private key under alg and kid.
func SignWith(t testing.TB, key any, alg, kid string, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Compact builds a compact JWS from a header, claims and a signature
// function over "header.payload": the way to make tokens no library
// would (alg none, HS256 with a public key).
func Compact(header, claims map[string]any, sign func(signingInput []byte) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := b64(h) + "." + b64(c)
	return in + "." + b64(sign([]byte(in)))
}

// NoneToken is an unsigned token (alg "none").
func NoneToken(claims map[string]any) string {
	return Compact(map[string]any{"alg": "none", "typ": "JWT"}, claims, func([]byte) []byte { return nil })
}

// HS256Token is claims MACed with secret under kid: with secret = the
// issuer's public key, a verifier that lets the token pick the algorithm
// would accept it.
func HS256Token(secret []byte, kid string, claims map[string]any) string {
	return Compact(map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}, claims, func(in []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write(in)
		return m.Sum(nil)
	})
}

// Tamper changes the payload of a signed token (keeping its signature).
func Tamper(t testing.TB, token string, claims map[string]any) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("oidctest: not a compact JWS")
	}
	c, _ := json.Marshal(claims)
	return parts[0] + "." + b64(c) + "." + parts[2]
}

// FlipSignature changes one bit of the signature.
func FlipSignature(t testing.TB, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) == 0 {
		t.Fatalf("oidctest: bad signature part")
	}
	sig[len(sig)/2] ^= 1
	return parts[0] + "." + parts[1] + "." + b64(sig)
}

// RSASign signs input with PKCS#1 v1.5 SHA-256 (RS256), for Compact.
func (i *Issuer) RSASign(in []byte) []byte {
	h := sha256.Sum256(in)
	sig, err := rsa.SignPKCS1v15(rand.Reader, i.RSA, crypto.SHA256, h[:])
	if err != nil {
		panic(err)
	}
	return sig
}

// RandomID is 16 random hex digits (a jti, a kid).
func RandomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// Server serves an issuer's discovery document and key set on 127.0.0.1
// and counts key-set requests.
type Server struct {
	*httptest.Server
	Issuer   *Issuer
	jwksHits atomic.Int64
	discHits atomic.Int64
	fail     atomic.Bool
	jwks     atomic.Pointer[[]byte]
}

// Serve starts a server for a new issuer whose URL is the server's
// (http://127.0.0.1:PORT), so discovery works against it. The key set is
// at /jwks.
func Serve(t testing.TB) *Server {
	t.Helper()
	s := &Server{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		s.discHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": s.Issuer.URL, "jwks_uri": s.URL + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		s.jwksHits.Add(1)
		if s.fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if set := s.jwks.Load(); set != nil {
			_, _ = w.Write(*set)
			return
		}
		_, _ = w.Write(s.Issuer.JWKS())
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	s.Issuer = NewIssuer(t, s.URL)
	return s
}

// JWKSRequests is how many times the key set was fetched.
func (s *Server) JWKSRequests() int64 { return s.jwksHits.Load() }

// DiscoveryRequests is how many times discovery was fetched.
func (s *Server) DiscoveryRequests() int64 { return s.discHits.Load() }

// Fail makes the key set answer 503 (the issuer is down) or recover.
func (s *Server) Fail(down bool) { s.fail.Store(down) }

// SetJWKS replaces the served key set (a key rotation); nil restores the
// issuer's own.
func (s *Server) SetJWKS(set []byte) {
	if set == nil {
		s.jwks.Store(nil)
		return
	}
	s.jwks.Store(&set)
}

// JWKSWith is the issuer's key set plus extra public keys.
func (i *Issuer) JWKSWith(extra ...jose.JSONWebKey) []byte {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(i.JWKS(), &set); err != nil {
		panic(err)
	}
	set.Keys = append(set.Keys, extra...)
	data, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return data
}
