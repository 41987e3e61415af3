package oidcauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// Defaults (see the package doc).
const (
	DefaultLeeway          = 30 * time.Second
	DefaultMaxAge          = 10 * time.Minute
	DefaultFetchCooldown   = time.Minute
	DefaultNegativeTTL     = 5 * time.Minute
	DefaultRefreshInterval = time.Hour

	// MaxTokenBytes bounds a token; CI tokens are 1-3 KiB.
	MaxTokenBytes = 16 << 10
	// maxJTIBytes bounds a jti kept in the replay cache.
	maxJTIBytes = 256
)

// The Config fields errors name (fielderr), so a caller can render them
// as its flags or keys.
var (
	FieldIssuer   = fielderr.Field{Pkg: "oidcauth", Name: "issuer"}
	FieldAudience = fielderr.Field{Pkg: "oidcauth", Name: "audience"}
	FieldJWKS     = fielderr.Field{Pkg: "oidcauth", Name: "jwks"}
)

var errorf = fielderr.Errorf

// Config configures a Verifier.
type Config struct {
	// Issuer is the exact iss tokens must carry, e.g.
	// https://token.actions.githubusercontent.com.
	Issuer string
	// Audience must be one of the token's aud values.
	Audience string
	// JWKS is the key set: an https URL (http only on loopback), a file
	// path, or "" for OIDC discovery from Issuer.
	JWKS string
	// HTTPClient fetches keys and discovery; nil means a client with a
	// 10s timeout that refuses redirects to plain http.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means none.
	Logger *zap.Logger
	// Leeway for exp, nbf and a future iat; 0 means DefaultLeeway.
	Leeway time.Duration
	// MaxAge is how old iat may be; 0 means DefaultMaxAge.
	MaxAge time.Duration
	// FetchCooldown is the least time between two key-set fetches;
	// 0 means DefaultFetchCooldown.
	FetchCooldown time.Duration
	// NegativeTTL is how long a kid missing from a fresh fetch is refused
	// without fetching; 0 means DefaultNegativeTTL.
	NegativeTTL time.Duration
	// RefreshInterval is the age at which a fetched key set is fetched
	// again on its next use; 0 means DefaultRefreshInterval.
	RefreshInterval time.Duration
}

// Token is a verified token.
type Token struct {
	Issuer    string
	Subject   string
	Audience  []string
	JTI       string
	Expiry    time.Time
	IssuedAt  time.Time
	NotBefore time.Time // zero when absent
	// ReplayUntil is the last instant this token could still verify: its
	// jti must be remembered until then.
	ReplayUntil time.Time
	// Claims are all claims, numbers kept as json.Number (their text).
	Claims map[string]any
}

// Verifier verifies CI OIDC tokens. Safe for concurrent use.
type Verifier struct {
	cfg      Config
	keys     *keySet
	verifier *oidc.IDTokenVerifier
}

// NewVerifier checks cfg and loads a key file (a remote key set is
// fetched on first use, or by Prefetch). Errors name the Config field.
func NewVerifier(cfg Config) (*Verifier, error) {
	var errs []error
	if cfg.Issuer == "" {
		errs = append(errs, errorf("%s: required (the exact iss of the tokens)", FieldIssuer))
	}
	if cfg.Audience == "" {
		errs = append(errs, errorf("%s: required (a value the tokens' aud must contain)", FieldAudience))
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"leeway", &cfg.Leeway, DefaultLeeway}, {"max age", &cfg.MaxAge, DefaultMaxAge},
		{"fetch cooldown", &cfg.FetchCooldown, DefaultFetchCooldown}, {"negative ttl", &cfg.NegativeTTL, DefaultNegativeTTL},
		{"refresh interval", &cfg.RefreshInterval, DefaultRefreshInterval},
	} {
		switch {
		case *d.v == 0:
			*d.v = d.def
		case *d.v < 0:
			errs = append(errs, fmt.Errorf("%s: must be positive", d.name))
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = newFetchClient()
	}
	var ks *keySet
	switch {
	case cfg.JWKS == "":
		if err := checkFetchURL(cfg.Issuer); err != nil && cfg.Issuer != "" {
			errs = append(errs, errorf("%s: OIDC discovery needs an https issuer URL, or give the key set (%s): %w", FieldIssuer, FieldJWKS, err))
		}
		ks = &keySet{fetch: (&remoteFetcher{issuer: cfg.Issuer, client: cfg.HTTPClient}).fetch}
	case strings.Contains(cfg.JWKS, "://"):
		if err := checkFetchURL(cfg.JWKS); err != nil {
			errs = append(errs, errorf("%s: %w", FieldJWKS, err))
		}
		ks = &keySet{fetch: (&remoteFetcher{issuer: cfg.Issuer, client: cfg.HTTPClient, jwksURL: cfg.JWKS}).fetch}
	default:
		data, err := os.ReadFile(cfg.JWKS)
		if err != nil {
			errs = append(errs, errorf("%s: reading the key file: %w", FieldJWKS, err))
			break
		}
		keys, err := parseJWKS(data, true)
		if err != nil {
			errs = append(errs, errorf("%s: %s: %w", FieldJWKS, cfg.JWKS, err))
			break
		}
		ks = newStaticKeySet(keys)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	ks.now, ks.log = cfg.Now, cfg.Logger
	ks.cooldown, ks.negTTL, ks.refresh = cfg.FetchCooldown, cfg.NegativeTTL, cfg.RefreshInterval
	if ks.sem == nil {
		ks.sem = make(chan struct{}, 1)
		ks.negative = map[string]time.Time{}
	}
	v := &Verifier{cfg: cfg, keys: ks}
	v.verifier = oidc.NewVerifier(cfg.Issuer, ks, &oidc.Config{
		ClientID:             cfg.Audience,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256},
		// exp, nbf and iat are checked below, with our leeway and clock.
		SkipExpiryCheck: true,
	})
	return v, nil
}

// Prefetch fetches a remote key set now (a no-op for a key file), so the
// first token does not wait and a wrong URL shows in the log at start.
func (v *Verifier) Prefetch(ctx context.Context) error {
	if v.keys.fetch == nil {
		return nil
	}
	if _, err := v.keys.maybeFetch(ctx); err != nil {
		return err
	}
	v.keys.mu.Lock()
	defer v.keys.mu.Unlock()
	return v.keys.lastErr
}

// Verify verifies raw (the compact JWS, without "Bearer "). A refusal is
// a *VerifyError.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Token, error) {
	if raw == "" {
		return nil, refuse(ReasonMissing, nil)
	}
	if len(raw) > MaxTokenBytes {
		return nil, refuse(ReasonTooLarge, fmt.Errorf("%d bytes", len(raw)))
	}
	if err := checkHeader(raw); err != nil {
		return nil, err
	}
	note := &verifyNote{}
	idt, err := v.verifier.Verify(context.WithValue(ctx, noteKey{}, note), raw)
	if err != nil {
		return nil, v.classify(note, err)
	}
	var claims map[string]any
	dec := json.NewDecoder(bytes.NewReader(note.payload))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return nil, refuse(ReasonClaims, err)
	}
	t := &Token{Issuer: idt.Issuer, Subject: idt.Subject, Audience: idt.Audience, Claims: claims}
	return t, v.checkTimesAndIDs(t)
}

// checkHeader reads the protected header before any library does, to
// refuse anything but a compact RS256/ES256 JWS with a clear reason: alg
// "none", HS256 (the "public key as HMAC secret" confusion), JWE, or the
// JSON serialization.
func checkHeader(raw string) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return refuse(ReasonMalformed, fmt.Errorf("%d dot-separated parts, want 3", len(parts)))
	}
	for _, p := range parts {
		if strings.TrimLeft(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return refuse(ReasonMalformed, errors.New("a part is not base64url"))
		}
	}
	hdr, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return refuse(ReasonMalformed, fmt.Errorf("header: %w", err))
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		return refuse(ReasonMalformed, fmt.Errorf("header: %w", err))
	}
	if !slices.Contains(allowedAlgs, jose.SignatureAlgorithm(h.Alg)) {
		return refuse(ReasonAlgorithm, fmt.Errorf("alg %.20q", h.Alg))
	}
	return nil
}

// classify turns go-oidc's error (a flat string) into a public reason,
// using what the key set noted and, once the signature verified, the
// claims themselves.
func (v *Verifier) classify(note *verifyNote, err error) error {
	switch {
	case errors.Is(note.err, ErrKeysUnavailable):
		return &VerifyError{Reason: ReasonUnavailable, Unavailable: true, Err: note.err}
	case errors.Is(note.err, ErrUnknownKey):
		return refuse(ReasonUnknownKey, note.err)
	case errors.Is(note.err, ErrBadSignature):
		return refuse(ReasonSignature, note.err)
	case note.err != nil || note.payload == nil:
		return refuse(ReasonMalformed, err)
	}
	// The signature is good; go-oidc refused the claims.
	var c struct {
		Iss string          `json:"iss"`
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(note.payload, &c) != nil {
		return refuse(ReasonClaims, err)
	}
	if c.Iss != v.cfg.Issuer {
		return refuse(ReasonIssuer, err)
	}
	var one string
	var many []string
	switch {
	case json.Unmarshal(c.Aud, &one) == nil && one == v.cfg.Audience:
	case json.Unmarshal(c.Aud, &many) == nil && slices.Contains(many, v.cfg.Audience):
	default:
		return refuse(ReasonAudience, err)
	}
	return refuse(ReasonClaims, err)
}

// checkTimesAndIDs applies the time rules and requires jti and sub.
func (v *Verifier) checkTimesAndIDs(t *Token) error {
	now := v.cfg.Now()
	var err error
	var present bool
	if t.Expiry, present, err = numericDate(t.Claims, "exp"); err != nil || !present {
		return refuse(ReasonClaims, fmt.Errorf("exp: missing or not a number: %v", err))
	}
	if now.After(t.Expiry.Add(v.cfg.Leeway)) {
		return refuse(ReasonExpired, fmt.Errorf("expired at %s", t.Expiry.UTC().Format(time.RFC3339)))
	}
	if t.NotBefore, present, err = numericDate(t.Claims, "nbf"); err != nil {
		return refuse(ReasonClaims, fmt.Errorf("nbf: %w", err))
	}
	if present && t.NotBefore.After(now.Add(v.cfg.Leeway)) {
		return refuse(ReasonNotYetValid, fmt.Errorf("nbf %s", t.NotBefore.UTC().Format(time.RFC3339)))
	}
	if t.IssuedAt, present, err = numericDate(t.Claims, "iat"); err != nil || !present {
		return refuse(ReasonClaims, fmt.Errorf("iat: missing or not a number: %v", err))
	}
	if t.IssuedAt.After(now.Add(v.cfg.Leeway)) {
		return refuse(ReasonIssuedFuture, fmt.Errorf("iat %s", t.IssuedAt.UTC().Format(time.RFC3339)))
	}
	if now.Sub(t.IssuedAt) > v.cfg.MaxAge {
		return refuse(ReasonTooOld, fmt.Errorf("issued %s ago, more than %s", now.Sub(t.IssuedAt).Round(time.Second), v.cfg.MaxAge))
	}
	jti, _ := t.Claims["jti"].(string)
	switch {
	case jti == "":
		return refuse(ReasonNoJTI, nil)
	case len(jti) > maxJTIBytes:
		return refuse(ReasonClaims, fmt.Errorf("jti longer than %d bytes", maxJTIBytes))
	}
	t.JTI = jti
	if t.Subject == "" {
		return refuse(ReasonNoSubject, nil)
	}
	t.ReplayUntil = t.Expiry.Add(v.cfg.Leeway)
	if last := t.IssuedAt.Add(v.cfg.MaxAge); last.Before(t.ReplayUntil) {
		t.ReplayUntil = last
	}
	return nil
}

// numericDate reads an RFC 7519 NumericDate claim (seconds since the
// epoch, possibly fractional).
func numericDate(claims map[string]any, name string) (time.Time, bool, error) {
	v, ok := claims[name]
	if !ok {
		return time.Time{}, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, true, fmt.Errorf("%s is not a number", name)
	}
	f, err := n.Float64()
	// Beyond year 5138 (and NaN, negative) is no date any issuer means.
	if err != nil || math.IsNaN(f) || f < 0 || f > 1e11 {
		return time.Time{}, true, fmt.Errorf("%s is not a valid date", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true, nil
}
