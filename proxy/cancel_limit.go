package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// A CancelRequest is answered before authentication and never gets a reply,
// so it is the one thing an unauthenticated client can send over and over
// for free; its secret is 32 bits in protocol 3.0 (postgres before 18).
// CancelLimits bound how fast one source may try, and make guessing count
// toward the source's ban.
//
// Defaults for CancelLimits. psql sends one cancel per Ctrl-C and pgx one
// per cancelled context: far below 10 a second from one host, even for a
// busy application server. Ten unknown keys are one failed login, so with
// the jail's default of 5 retries a source is banned after 50 guesses.
const (
	DefaultCancelRate              = 10
	DefaultCancelBurst             = 50
	DefaultCancelUnknownPerFailure = 10
	DefaultCancelMaxSources        = 10000
)

// CancelLimits configures a CancelLimiter.
type CancelLimits struct {
	// Rate is how many cancel requests a source may send per second,
	// after a burst of Burst. A source is an IPv4 address or an IPv6 /64
	// (one host usually has a whole /64). Requests over the rate are
	// dropped, whatever their key: a right guess has no effect then either.
	Rate  float64
	Burst int
	// UnknownPerFailure: each time a source has sent this many cancel
	// requests with a key no live session has, OnGuesses is called once.
	// 0 never calls it.
	UnknownPerFailure int
	// MaxSources bounds the sources tracked at once; the least recently
	// seen is forgotten first (its unknown keys not yet reported are
	// reported then, so churning sources does not erase guesses).
	MaxSources int
	// OnGuesses, if set, is told of every UnknownPerFailure unknown keys
	// from a source (banpolicy counts it as one failed login). It is called
	// outside the limiter's lock and must not block for long.
	OnGuesses func(remote netip.Addr)
}

// DefaultCancelLimits returns the defaults above, without OnGuesses.
func DefaultCancelLimits() CancelLimits {
	return CancelLimits{
		Rate:              DefaultCancelRate,
		Burst:             DefaultCancelBurst,
		UnknownPerFailure: DefaultCancelUnknownPerFailure,
		MaxSources:        DefaultCancelMaxSources,
	}
}

// CancelLimiter applies CancelLimits. Routes of one process should share
// one, so a source has one budget however many listeners it reaches.
type CancelLimiter struct {
	limits  CancelLimits
	mu      sync.Mutex
	sources *simplelru.LRU[netip.Prefix, *cancelSource]
	evicted []netip.Addr // filled by onEvict under mu, reported after
}

// cancelSource is what the limiter remembers of one source.
type cancelSource struct {
	limiter *rate.Limiter
	unknown int        // unknown keys not yet reported
	last    netip.Addr // the address that sent the last one
}

// NewCancelLimiter checks l and returns a limiter.
func NewCancelLimiter(l CancelLimits) (*CancelLimiter, error) {
	var errs []error
	if !(l.Rate > 0) { // also catches NaN
		errs = append(errs, fmt.Errorf("proxy: cancel rate %v must be positive", l.Rate))
	}
	if l.Burst < 1 {
		errs = append(errs, fmt.Errorf("proxy: cancel burst %d must be at least 1", l.Burst))
	}
	if l.UnknownPerFailure < 0 {
		errs = append(errs, fmt.Errorf("proxy: cancel unknown keys per failure %d must not be negative", l.UnknownPerFailure))
	}
	if l.MaxSources < 1 {
		errs = append(errs, fmt.Errorf("proxy: cancel max sources %d must be at least 1", l.MaxSources))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c := &CancelLimiter{limits: l}
	lru, err := simplelru.NewLRU(l.MaxSources, c.onEvict)
	if err != nil {
		return nil, fmt.Errorf("proxy: creating the cancel limiter: %w", err)
	}
	c.sources = lru
	return c, nil
}

// onEvict runs inside sources.Add, under mu.
func (c *CancelLimiter) onEvict(_ netip.Prefix, src *cancelSource) {
	if src.unknown > 0 && c.limits.UnknownPerFailure > 0 {
		c.evicted = append(c.evicted, src.last)
	}
}

// sourceKey is what a source is counted as, for cancel limits and log
// sampling: its address, or for IPv6 its /64 (one host usually has a whole
// /64, so rotating addresses inside it must not make new sources).
func sourceKey(remote netip.Addr) netip.Prefix {
	if remote.Is6() {
		p, _ := remote.Prefix(64)
		return p
	}
	return netip.PrefixFrom(remote, remote.BitLen())
}

// sourceLocked returns remote's entry, creating it; the caller holds mu.
func (c *CancelLimiter) sourceLocked(remote netip.Addr) *cancelSource {
	k := sourceKey(remote)
	if src, ok := c.sources.Get(k); ok {
		return src
	}
	src := &cancelSource{limiter: rate.NewLimiter(rate.Limit(c.limits.Rate), c.limits.Burst)}
	c.sources.Add(k, src)
	return src
}

// observe records one cancel request from remote and whether its key was
// known. It returns whether the request is within the source's rate; a
// request over the rate is not forwarded even with a known key.
func (c *CancelLimiter) observe(remote netip.Addr, known bool) (allowed bool) {
	var report []netip.Addr
	c.mu.Lock()
	src := c.sourceLocked(remote)
	allowed = src.limiter.Allow()
	if !known && c.limits.UnknownPerFailure > 0 {
		src.last = remote
		if src.unknown++; src.unknown >= c.limits.UnknownPerFailure {
			src.unknown = 0
			report = append(report, remote)
		}
	}
	report = append(report, c.evicted...)
	c.evicted = c.evicted[:0]
	c.mu.Unlock()
	if c.limits.OnGuesses != nil {
		for _, a := range report {
			c.limits.OnGuesses(a)
		}
	}
	return allowed
}

// SetLimits changes Rate, Burst and UnknownPerFailure (a reload), for the
// sources already tracked too; MaxSources and OnGuesses stay. Invalid
// limits are refused whole.
func (c *CancelLimiter) SetLimits(rateLimit float64, burst, unknownPerFailure int) error {
	check := c.limits
	check.Rate, check.Burst, check.UnknownPerFailure = rateLimit, burst, unknownPerFailure
	if _, err := NewCancelLimiter(check); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limits.Rate, c.limits.Burst, c.limits.UnknownPerFailure = rateLimit, burst, unknownPerFailure
	for _, k := range c.sources.Keys() {
		if src, ok := c.sources.Peek(k); ok {
			src.limiter.SetLimit(rate.Limit(rateLimit))
			src.limiter.SetBurst(burst)
		}
	}
	return nil
}

// Limits returns the limits in force.
func (c *CancelLimiter) Limits() CancelLimits {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.limits
}

// Sources reports how many sources the limiter tracks now.
func (c *CancelLimiter) Sources() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sources.Len()
}

// PlaintextCancel says whether a CancelRequest may arrive unencrypted.
// libpq before PostgreSQL 17 (psql's Ctrl-C, PQcancel) always sends it in
// plaintext, pgx and libpq 17's PQcancelCreate over TLS when the session
// is. A plaintext cancel carries no client certificate, so on a route that
// requires one it would let anyone who can reach the port try keys.
type PlaintextCancel int

const (
	// PlaintextCancelAuto allows plaintext cancels unless the route
	// checks client certificates (Config.Authorizer is set).
	PlaintextCancelAuto PlaintextCancel = iota
	// PlaintextCancelAllow always allows them.
	PlaintextCancelAllow
	// PlaintextCancelDeny never allows them: cancels must come over TLS.
	PlaintextCancelDeny
)

// String names the policy as the command line does.
func (p PlaintextCancel) String() string {
	switch p {
	case PlaintextCancelAuto:
		return "auto"
	case PlaintextCancelAllow:
		return "allow"
	case PlaintextCancelDeny:
		return "deny"
	}
	return fmt.Sprintf("PlaintextCancel(%d)", int(p))
}
