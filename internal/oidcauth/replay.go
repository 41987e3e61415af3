package oidcauth

import (
	"sync"
	"time"
)

// DefaultReplayEntries bounds a ReplayCache: about 100 bytes each, so 10 MB
// at most, and ten minutes' worth (MaxAge) of 160 grants a second.
const DefaultReplayEntries = 100000

// ReplayCache remembers used jti values until their tokens could no
// longer verify. See the package doc for why it refuses rather than
// forgets when full.
type ReplayCache struct {
	max int
	now func() time.Time

	mu       sync.Mutex
	seen     map[string]time.Time // jti → until
	earliest time.Time            // the soonest until in seen (zero when empty)
}

// NewReplayCache returns a cache of at most max entries (0 means
// DefaultReplayEntries) on clock now (nil means time.Now).
func NewReplayCache(max int, now func() time.Time) *ReplayCache {
	if max <= 0 {
		max = DefaultReplayEntries
	}
	if now == nil {
		now = time.Now
	}
	return &ReplayCache{max: max, now: now, seen: map[string]time.Time{}}
}

// Use records jti as used through until (inclusive: until is the last
// instant its token could verify). It returns ErrReplayed when jti is
// already remembered, and a *ReplayFullError when the cache is full of
// entries that have not expired. Checking and recording are one step, so
// two concurrent requests with one token cannot both pass.
func (c *ReplayCache) Use(jti string, until time.Time) error {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if u, ok := c.seen[jti]; ok && !now.After(u) {
		return ErrReplayed
	}
	if len(c.seen) >= c.max {
		// Scan only when something can have expired: a cache full of live
		// entries refuses in O(1).
		if now.After(c.earliest) {
			c.sweepLocked(now)
		}
		if len(c.seen) >= c.max {
			return &ReplayFullError{RetryAfter: c.earliest.Sub(now) + time.Nanosecond}
		}
	}
	c.seen[jti] = until
	if c.earliest.IsZero() || until.Before(c.earliest) {
		c.earliest = until
	}
	return nil
}

// Forget drops jti: the request it came with granted nothing (the grant
// could not be stored), so the same token may try again.
func (c *ReplayCache) Forget(jti string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, jti)
}

// Len is the number of remembered tokens.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *ReplayCache) sweepLocked(now time.Time) {
	c.earliest = time.Time{}
	for k, u := range c.seen {
		if now.After(u) {
			delete(c.seen, k)
			continue
		}
		if c.earliest.IsZero() || u.Before(c.earliest) {
			c.earliest = u
		}
	}
}
