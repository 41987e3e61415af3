package oidcauth

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgwarden/pgwarden/internal/oidcauth/oidctest"
)

// publicReasons is every text a refusal may show a client.
var publicReasons = map[string]bool{
	ReasonMissing: true, ReasonTooLarge: true, ReasonMalformed: true, ReasonAlgorithm: true,
	ReasonUnknownKey: true, ReasonSignature: true, ReasonIssuer: true, ReasonAudience: true,
	ReasonExpired: true, ReasonNotYetValid: true, ReasonIssuedFuture: true, ReasonTooOld: true,
	ReasonNoJTI: true, ReasonNoSubject: true, ReasonClaims: true, ReasonUnavailable: true,
}

// FuzzVerifyToken feeds arbitrary strings to Verify: it must never panic,
// always refuse with one of the fixed public reasons, and never accept
// anything but the one valid token among the seeds (so no mutation of a
// signed token verifies).
func FuzzVerifyToken(f *testing.F) {
	clock := newFakeClock()
	v, iss := staticVerifier(f, clock)
	now := clock.Now()
	valid := iss.Sign(f, "RS256", "", iss.Claims(testAudience, now))
	validEC := iss.Sign(f, "ES256", "", iss.Claims(testAudience, now))
	for _, s := range []string{
		valid, validEC,
		oidctest.FlipSignature(f, valid),
		oidctest.NoneToken(iss.Claims(testAudience, now)),
		oidctest.HS256Token(iss.RSAPublicPEM(), oidctest.RSAKeyID, iss.Claims(testAudience, now)),
		iss.Sign(f, "RS256", "unknown", iss.Claims(testAudience, now)),
		"", ".", "..", "a.b.c", "eyJhbGciOiJSUzI1NiJ9..", "eyJhbGciOiJSUzI1NiJ9.e30.",
		`{"payload":"e30","signatures":[{"protected":"eyJhbGciOiJSUzI1NiJ9","signature":"AA"}]}`,
		strings.Repeat("A", 100) + "." + strings.Repeat("B", 100) + "." + strings.Repeat("C", 100),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := v.Verify(context.Background(), s)
		if err == nil {
			if s != valid && s != validEC {
				t.Fatalf("verified a token that is not a seed: %q (sub %q)", s, tok.Subject)
			}
			return
		}
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("refusal is not a *VerifyError: %T %v", err, err)
		}
		if !publicReasons[ve.Reason] {
			t.Fatalf("reason %q is not one of the fixed public texts", ve.Reason)
		}
	})
}
