package grantapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/time/rate"

	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grantapi/granttest"
	"github.com/pgwarden/pgwarden/internal/oidcauth/oidctest"
)

// allowedStatus is every status the endpoint may answer a POST with.
var allowedStatus = map[int]bool{
	http.StatusCreated: true, http.StatusBadRequest: true, http.StatusUnauthorized: true,
	http.StatusForbidden: true, http.StatusConflict: true, http.StatusRequestEntityTooLarge: true,
	http.StatusTooManyRequests: true, http.StatusServiceUnavailable: true,
}

// FuzzSelfGrant sends arbitrary Authorization headers, content types and
// bodies to the handler. It must never panic, answer only allowed
// statuses, always with {"error": "..."} unless 201, and grant only for
// one of the two valid tokens among the seeds (a mutated token never
// verifies).
func FuzzSelfGrant(f *testing.F) {
	e := granttest.Start(f, granttest.Options{Handler: func(c *grantapi.Config) { c.Rate, c.Burst = rate.Inf, 1 }})
	valid := e.Token(f, "RS256")
	validEC := e.Token(f, "ES256")
	noRule := e.Token(f, "RS256", func(c map[string]any) { c["repository_id"] = "1" })
	now := e.Clock.Now()
	for _, seed := range []struct {
		auth, ctype string
		body        []byte
	}{
		{"Bearer " + valid, "application/json", []byte(`{"ttl":"20m"}`)},
		{"Bearer " + validEC, "", nil},
		{"bearer " + noRule, "", []byte(`{}`)},
		{"Bearer " + oidctest.FlipSignature(f, valid), "application/json", []byte(`{"ttl":"1h"}`)},
		{"Bearer " + oidctest.NoneToken(e.Issuer.Claims(e.Audience, now)), "", nil},
		{"Bearer " + oidctest.HS256Token(e.Issuer.RSAPublicPEM(), oidctest.RSAKeyID, e.Issuer.Claims(e.Audience, now)), "", nil},
		{"Basic Zm9vOmJhcg==", "text/plain", []byte("ttl=5m")},
		{"", "", []byte(`{"ttl":"20m","ttl":"1s"}`)},
		{"Bearer x", "application/json", []byte(`{"ttl":"20m"} trailing`)},
		{"Bearer " + valid, "", bytes.Repeat([]byte("{"), 100)},
		{"Bearer " + valid, "", []byte(`{"ttl":"9999999999h"}`)},
	} {
		f.Add(seed.auth, seed.ctype, seed.body)
	}
	f.Fuzz(func(t *testing.T, auth, ctype string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, grantapi.Path, bytes.NewReader(body))
		req.RemoteAddr = "192.0.2.1:40000"
		if auth != "" {
			req.Header["Authorization"] = []string{auth}
		}
		if ctype != "" {
			req.Header["Content-Type"] = []string{ctype}
		}
		rec := httptest.NewRecorder()
		e.Handler.ServeHTTP(rec, req)
		if !allowedStatus[rec.Code] {
			t.Fatalf("status %d for auth %q body %q", rec.Code, auth, body)
		}
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("answer is not JSON: %q", rec.Body.String())
		}
		if rec.Code == http.StatusCreated {
			tok := strings.TrimSpace(auth[strings.IndexByte(auth, ' ')+1:])
			if tok != valid && tok != validEC {
				t.Fatalf("granted for a token that is not a valid seed: %q", auth)
			}
			if out["source"] != "192.0.2.1" {
				t.Fatalf("granted %v, not the peer", out["source"])
			}
			return
		}
		msg, _ := out["error"].(string)
		if msg == "" {
			t.Fatalf("status %d without an error text: %q", rec.Code, rec.Body.String())
		}
		if _, tok, ok := strings.Cut(auth, " "); ok && len(tok) >= 16 && strings.Contains(msg, tok[:16]) {
			t.Fatalf("the answer echoes the token: %q", msg)
		}
	})
}
