package oidcauth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

// maxNegative bounds the negative cache of unknown kids.
const maxNegative = 1024

// keySet implements go-oidc's KeySet over a static set (fetch == nil) or
// a remote one, fetched with a cooldown and a negative cache (see the
// package doc). Verification reads the current keys lock-free.
type keySet struct {
	fetch    func(ctx context.Context) ([]jose.JSONWebKey, error) // nil: static
	now      func() time.Time
	log      *zap.Logger
	cooldown time.Duration
	negTTL   time.Duration
	refresh  time.Duration

	cache atomic.Pointer[keyCache]

	// sem serialises fetches; waiting for it honours the request's ctx.
	sem chan struct{}

	mu          sync.Mutex // guards the fields below
	fetchedAt   time.Time  // last successful fetch
	lastAttempt time.Time
	lastErr     error
	negative    map[string]time.Time
	fetches     int // successful and failed, for tests and logs
}

func newStaticKeySet(keys []jose.JSONWebKey) *keySet {
	ks := &keySet{sem: make(chan struct{}, 1), negative: map[string]time.Time{}}
	ks.cache.Store(newKeyCache(keys))
	return ks
}

// verifyNote carries what the key set saw back to Verify through the
// context, because go-oidc flattens the KeySet's error into a string.
type verifyNote struct {
	payload []byte // set when the signature verified
	err     error  // ErrUnknownKey, ErrKeysUnavailable, ErrBadSignature, or a parse error
}

type noteKey struct{}

// VerifySignature implements oidc.KeySet.
func (ks *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	note, _ := ctx.Value(noteKey{}).(*verifyNote)
	if note == nil {
		note = &verifyNote{}
	}
	payload, err := ks.verify(ctx, raw)
	note.payload, note.err = payload, err
	return payload, err
}

func (ks *keySet) verify(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, allowedAlgs)
	if err != nil {
		return nil, fmt.Errorf("parsing token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("parsing token: want exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID

	if ks.fetch == nil {
		keys := ks.cache.Load().lookup(kid)
		if len(keys) == 0 {
			return nil, ErrUnknownKey
		}
		return verifyWith(jws, keys)
	}

	if keys := ks.cache.Load().lookup(kid); len(keys) > 0 && !ks.stale() {
		// A known kid that fails is a bad signature: never a reason to
		// fetch again.
		return verifyWith(jws, keys)
	}
	if kid != "" && ks.negativeHit(kid) {
		return nil, ErrUnknownKey
	}
	fetched, err := ks.maybeFetch(ctx)
	if err != nil {
		return nil, err // the request's ctx ended while waiting
	}
	if keys := ks.cache.Load().lookup(kid); len(keys) > 0 {
		return verifyWith(jws, keys)
	}
	if fetched && kid != "" {
		ks.remember(kid)
	}
	ks.mu.Lock()
	failed := ks.lastErr != nil
	ks.mu.Unlock()
	if ks.cache.Load() == nil || failed {
		return nil, ErrKeysUnavailable
	}
	return nil, ErrUnknownKey
}

// stale reports a key set older than the refresh interval.
func (ks *keySet) stale() bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.now().Sub(ks.fetchedAt) >= ks.refresh
}

// maybeFetch fetches the key set unless a fetch was attempted within the
// cooldown. It reports whether this call fetched successfully. Waiters
// for a running fetch share its result; the fetch itself runs without the
// request's cancellation, bounded by the fetcher's own timeout.
func (ks *keySet) maybeFetch(ctx context.Context) (bool, error) {
	select {
	case ks.sem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-ks.sem }()

	now := ks.now()
	ks.mu.Lock()
	if !ks.lastAttempt.IsZero() && now.Sub(ks.lastAttempt) < ks.cooldown {
		ks.mu.Unlock()
		return false, nil
	}
	ks.lastAttempt = now
	ks.fetches++
	ks.mu.Unlock()

	keys, err := ks.fetch(context.WithoutCancel(ctx))

	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.lastErr = err
	if err != nil {
		ks.log.Warn("fetching the OIDC key set failed; keeping the keys already known", zap.Error(err),
			zap.Duration("next_attempt_in", ks.cooldown))
		return false, nil
	}
	ks.fetchedAt = ks.now()
	ks.cache.Store(newKeyCache(keys))
	// Kids refused before may be in the new set.
	clear(ks.negative)
	ks.log.Info("OIDC key set fetched", zap.Int("keys", len(keys)))
	return true, nil
}

// negativeHit reports a kid that a recent fetch did not contain.
func (ks *keySet) negativeHit(kid string) bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	until, ok := ks.negative[kid]
	return ok && ks.now().Before(until)
}

// remember adds kid to the negative cache, making room by dropping
// expired entries, then (if still full) any entry: forgetting one costs at
// most one fetch, which the cooldown bounds anyway.
func (ks *keySet) remember(kid string) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	now := ks.now()
	if len(ks.negative) >= maxNegative {
		for k, until := range ks.negative {
			if !now.Before(until) {
				delete(ks.negative, k)
			}
		}
		for k := range ks.negative {
			if len(ks.negative) < maxNegative {
				break
			}
			delete(ks.negative, k)
		}
	}
	ks.negative[kid] = now.Add(ks.negTTL)
}

// fetchCount is how many fetches were attempted.
func (ks *keySet) fetchCount() int {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.fetches
}
