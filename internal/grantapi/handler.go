package grantapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
)

// Path is the self-service endpoint.
const Path = "/v1/grants/self"

// Defaults for the per-source rate: a CI job asks once, then renews every
// few minutes; five at once and one every five seconds is plenty.
const (
	DefaultRate       = rate.Limit(0.2)
	DefaultBurst      = 5
	DefaultMaxSources = 10000
)

// TokenVerifier verifies a bearer token (*oidcauth.Verifier).
type TokenVerifier interface {
	Verify(ctx context.Context, raw string) (*oidcauth.Token, error)
}

// RuleMatcher finds the rule admitting a token (*oidcauth.Rules).
type RuleMatcher interface {
	Match(claims map[string]any) (*oidcauth.Match, bool)
}

// ReplayGuard remembers used tokens (*oidcauth.ReplayCache).
type ReplayGuard interface {
	Use(jti string, until time.Time) error
	Forget(jti string)
}

// Granter makes grants (*grants.Registry).
type Granter interface {
	Add(req grants.AddRequest) (grants.AddResult, error)
}

// Outcome labels an answer, for metrics (pgwarden_grant_requests_total
// {outcome} or refusals by reason).
type Outcome string

// Outcomes.
const (
	OutcomeGranted     Outcome = "granted"
	OutcomeExtended    Outcome = "extended"
	OutcomeBadRequest  Outcome = "bad_request"
	OutcomeNotFound    Outcome = "not_found"
	OutcomeBanned      Outcome = "banned"
	OutcomeRateLimited Outcome = "rate_limited"
	OutcomeTooLarge    Outcome = "too_large"
	OutcomeBadToken    Outcome = "bad_token"
	OutcomeNoRule      Outcome = "no_rule"
	OutcomeReplayed    Outcome = "replayed"
	OutcomeUnavailable Outcome = "unavailable"
	OutcomeError       Outcome = "error"
)

// Outcomes lists every outcome, for metrics that pre-register their
// labels.
func Outcomes() []Outcome {
	return []Outcome{
		OutcomeGranted, OutcomeExtended, OutcomeBadRequest, OutcomeNotFound, OutcomeBanned, OutcomeRateLimited,
		OutcomeTooLarge, OutcomeBadToken, OutcomeNoRule, OutcomeReplayed, OutcomeUnavailable, OutcomeError,
	}
}

// Config configures a Handler.
type Config struct {
	Verifier TokenVerifier // required
	Rules    RuleMatcher   // required
	Grants   Granter       // required
	// Replay defaults to an oidcauth.ReplayCache of the default size.
	Replay ReplayGuard
	// Banned refuses a banned source's requests (403); nil bans nobody.
	Banned func(netip.Addr) bool
	// AuthFailed is called once per 401, with the source: wire it to the
	// jail's failure count so guessing tokens leads to a ban.
	AuthFailed func(netip.Addr)
	// SourceOf returns the address a request came from, normalised or
	// not. nil: the remote address of the connection as the Server
	// accepted it (ConnFromContext), else the request's RemoteAddr. With
	// PROXY protocol, return the header's source.
	SourceOf func(r *http.Request) (netip.Addr, bool)
	// Rate and Burst are the per-source token bucket (IPv4 address, IPv6
	// /64); MaxSources bounds the table. Defaults: DefaultRate,
	// DefaultBurst, DefaultMaxSources.
	Rate       rate.Limit
	Burst      int
	MaxSources int
	// OnOutcome is called once per request (metrics); nil means none.
	OnOutcome func(Outcome)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means none.
	Logger *zap.Logger
}

// Handler serves POST /v1/grants/self.
type Handler struct {
	cfg     Config
	log     *zap.Logger
	limiter *sourceLimiter
}

// NewHandler checks cfg and fills its defaults.
func NewHandler(cfg Config) (*Handler, error) {
	var errs []error
	if cfg.Verifier == nil {
		errs = append(errs, errors.New("grantapi: no token verifier"))
	}
	if cfg.Rules == nil {
		errs = append(errs, errors.New("grantapi: no rules"))
	}
	if cfg.Grants == nil {
		errs = append(errs, errors.New("grantapi: no grant registry"))
	}
	if cfg.Rate < 0 || cfg.Burst < 0 || cfg.MaxSources < 0 {
		errs = append(errs, errors.New("grantapi: rate, burst and max sources must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Replay == nil {
		cfg.Replay = oidcauth.NewReplayCache(0, cfg.Now)
	}
	if cfg.Banned == nil {
		cfg.Banned = func(netip.Addr) bool { return false }
	}
	if cfg.AuthFailed == nil {
		cfg.AuthFailed = func(netip.Addr) {}
	}
	if cfg.SourceOf == nil {
		cfg.SourceOf = DefaultSource
	}
	if cfg.OnOutcome == nil {
		cfg.OnOutcome = func(Outcome) {}
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.MaxSources == 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Handler{cfg: cfg, log: cfg.Logger, limiter: newSourceLimiter(cfg.Rate, cfg.Burst, cfg.MaxSources)}, nil
}

// DefaultSource is the peer address of the connection the Server accepted
// (before TLS), or the request's RemoteAddr when the handler runs under
// another server.
func DefaultSource(r *http.Request) (netip.Addr, bool) {
	if c := ConnFromContext(r.Context()); c != nil {
		return acl.PeerAddr(c.RemoteAddr())
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap().WithZone(""), true
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Path != Path {
		h.fail(w, OutcomeNotFound, http.StatusNotFound, "not found: the endpoint is POST "+Path)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, OutcomeBadRequest, http.StatusMethodNotAllowed, "method not allowed: use POST")
		return
	}
	src, ok := h.cfg.SourceOf(r)
	if !ok || !src.IsValid() {
		h.log.Error("grant request: cannot tell its source address", zap.String("remote", r.RemoteAddr))
		h.fail(w, OutcomeError, http.StatusInternalServerError, "internal error")
		return
	}
	src = src.Unmap().WithZone("")
	log := h.log.With(zap.String("source", src.String()))
	if c := ConnFromContext(r.Context()); c != nil {
		if b := balancerOf(c); b != nil {
			log = log.With(zap.Stringer("balancer", b))
		}
	}
	now := h.cfg.Now()

	// Cheapest checks first: a flood must not reach the signature check.
	if h.cfg.Banned(src) {
		log.Info("grant request refused: source banned")
		h.fail(w, OutcomeBanned, http.StatusForbidden, "this address is banned")
		return
	}
	if ok, wait := h.limiter.allow(src, now); !ok {
		w.Header().Set("Retry-After", strconv.FormatInt(retrySeconds(wait), 10))
		log.Debug("grant request refused: rate limited", zap.Duration("retry_after", wait))
		h.fail(w, OutcomeRateLimited, http.StatusTooManyRequests, "too many grant requests from this address; retry later")
		return
	}
	data, err := readBody(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.Is(err, errBodyTooLarge) || errors.As(err, &mbe) {
			h.fail(w, OutcomeTooLarge, http.StatusRequestEntityTooLarge, errBodyTooLarge.Error())
			return
		}
		log.Debug("grant request: reading the body failed", zap.Error(err))
		h.fail(w, OutcomeBadRequest, http.StatusBadRequest, "the request body could not be read")
		return
	}
	ttl, err := parseBody(data)
	if err != nil {
		h.fail(w, OutcomeBadRequest, http.StatusBadRequest, err.Error())
		return
	}

	raw, err := bearerToken(r.Header)
	if err == nil {
		var tok *oidcauth.Token
		if tok, err = h.cfg.Verifier.Verify(r.Context(), raw); err == nil {
			h.grant(w, log, src, ttl, tok)
			return
		}
	}
	var ve *oidcauth.VerifyError
	if errors.As(err, &ve) && ve.Unavailable {
		log.Warn("grant request: token not verifiable now", zap.Error(err))
		w.Header().Set("Retry-After", "60")
		h.fail(w, OutcomeUnavailable, http.StatusServiceUnavailable, ve.Reason)
		return
	}
	reason := oidcauth.ReasonMalformed
	if ve != nil {
		reason = ve.Reason
	}
	log.Warn("grant request: token refused", zap.String("reason", reason), zap.Error(err))
	h.cfg.AuthFailed(src)
	w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	h.fail(w, OutcomeBadToken, http.StatusUnauthorized, reason)
}

// grant runs the checks after verification: rules, replay, the grant.
func (h *Handler) grant(w http.ResponseWriter, log *zap.Logger, src netip.Addr, ttl time.Duration, tok *oidcauth.Token) {
	log = log.With(zap.String("sub", tok.Subject))
	m, ok := h.cfg.Rules.Match(tok.Claims)
	if !ok {
		log.Warn("grant request refused: no rule admits the token", zap.Any("claims", auditClaims(tok.Claims)))
		h.fail(w, OutcomeNoRule, http.StatusForbidden, "no rule admits this token")
		return
	}
	err := h.cfg.Replay.Use(tok.JTI, tok.ReplayUntil)
	var full *oidcauth.ReplayFullError
	switch {
	case errors.Is(err, oidcauth.ErrReplayed):
		log.Warn("grant request refused: token replayed", zap.String("jti", tok.JTI))
		h.fail(w, OutcomeReplayed, http.StatusConflict, "this token was used before; get a fresh one")
		return
	case errors.As(err, &full):
		log.Error("grant request refused: replay cache full", zap.Error(err))
		w.Header().Set("Retry-After", strconv.FormatInt(retrySeconds(full.RetryAfter), 10))
		h.fail(w, OutcomeUnavailable, http.StatusServiceUnavailable, "too many recent grant requests; retry later")
		return
	case err != nil:
		log.Error("grant request: replay check failed", zap.Error(err))
		h.fail(w, OutcomeError, http.StatusInternalServerError, "internal error")
		return
	}
	res, err := h.cfg.Grants.Add(grants.AddRequest{
		Source:    grants.HostPrefix(src),
		Route:     m.Rule.Route,
		Users:     m.Rule.Users,
		Databases: m.Rule.Databases,
		TTL:       ttl,
		MaxTTL:    m.Rule.MaxTTL,
		Reason:    selfReason(tok),
		CreatedBy: tok.Subject,
		Via:       grants.ViaOIDC,
		Rule:      m.Rule.Label(),
		Claims:    m.Claims,
	})
	if err != nil {
		// Nothing was granted: the same token may try again.
		h.cfg.Replay.Forget(tok.JTI)
		switch {
		case errors.Is(err, grants.ErrFull):
			log.Error("grant request refused: grant table full", zap.Error(err))
			h.fail(w, OutcomeUnavailable, http.StatusServiceUnavailable, "too many active grants; retry later")
		case errors.Is(err, grants.ErrBadRequest), errors.Is(err, grants.ErrBadTTL):
			log.Warn("grant request refused: not a valid grant", zap.Error(err))
			h.fail(w, OutcomeBadRequest, http.StatusBadRequest, "the token's subject or the rule cannot make a valid grant")
		default:
			log.Error("grant request failed", zap.Error(err))
			h.fail(w, OutcomeError, http.StatusInternalServerError, "internal error")
		}
		return
	}
	out := OutcomeGranted
	if res.Extended {
		out = OutcomeExtended
	}
	h.cfg.OnOutcome(out)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(grants.Answer{Grant: res.Grant, Extended: res.Extended})
}

// fail writes {"error": msg} with status.
func (h *Handler) fail(w http.ResponseWriter, o Outcome, status int, msg string) {
	h.cfg.OnOutcome(o)
	writeError(w, status, msg)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// bearerToken extracts the token of the one Authorization header.
func bearerToken(hdr http.Header) (string, error) {
	vals := hdr.Values("Authorization")
	switch len(vals) {
	case 0:
		return "", &oidcauth.VerifyError{Reason: oidcauth.ReasonMissing}
	case 1:
	default:
		return "", &oidcauth.VerifyError{Reason: oidcauth.ReasonMalformed, Err: errors.New("more than one Authorization header")}
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return "", &oidcauth.VerifyError{Reason: oidcauth.ReasonMissing, Err: errors.New("not a Bearer authorization")}
	}
	return strings.TrimSpace(tok), nil
}

// selfReason is the grant's reason: who asked, and which job run when
// the token says (GitHub run_id, GitLab job_id).
func selfReason(tok *oidcauth.Token) string {
	r := "self-service grant for " + tok.Subject
	for _, c := range []string{"run_id", "job_id", "pipeline_id"} {
		if v, ok := oidcauth.ClaimText(tok.Claims[c]); ok && len(v) <= 64 {
			r += fmt.Sprintf(" (%s %s)", c, v)
			break
		}
	}
	return r
}

// auditClaims picks the claims worth logging for a token no rule
// admitted: enough to see why, without dumping the whole token.
func auditClaims(claims map[string]any) map[string]string {
	out := map[string]string{}
	for _, c := range []string{
		"sub", "repository", "repository_id", "repository_owner_id", "ref", "ref_type", "environment", "workflow_ref",
		"project_path", "project_id", "namespace_id", "ref_protected", "pipeline_source",
	} {
		if v, ok := oidcauth.ClaimText(claims[c]); ok {
			if len(v) > 256 {
				v = v[:256] + "..."
			}
			out[c] = v
		}
	}
	return out
}

// retrySeconds rounds a wait up to whole seconds, at least 1.
func retrySeconds(d time.Duration) int64 {
	if d > 24*time.Hour {
		return 24 * 3600
	}
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}
