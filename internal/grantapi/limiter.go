package grantapi

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// sourceLimiter is a token bucket per source, IPv4 address or IPv6 /64
// (an IPv6 host picks freely inside its /64, so per-address buckets would
// not limit it). The table is an LRU of bounded size: past it the least
// recently seen source loses its bucket, which only matters to one that
// stayed quiet while maxSources others called, and whose new bucket
// starts full, the state a quiet bucket refills to anyway.
type sourceLimiter struct {
	limit rate.Limit
	burst int

	mu  sync.Mutex
	lru *simplelru.LRU[netip.Prefix, *rate.Limiter]
}

func newSourceLimiter(limit rate.Limit, burst, maxSources int) *sourceLimiter {
	l, err := simplelru.NewLRU[netip.Prefix, *rate.Limiter](maxSources, nil)
	if err != nil {
		panic(err) // maxSources is checked positive by the caller
	}
	return &sourceLimiter{limit: limit, burst: burst, lru: l}
}

// rateKey is ip's bucket key.
func rateKey(ip netip.Addr) netip.Prefix {
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// allow takes one token for ip at now; when none is left it returns how
// long until one is.
func (s *sourceLimiter) allow(ip netip.Addr, now time.Time) (bool, time.Duration) {
	k := rateKey(ip)
	s.mu.Lock()
	lim, ok := s.lru.Get(k)
	if !ok {
		lim = rate.NewLimiter(s.limit, s.burst)
		s.lru.Add(k, lim)
	}
	s.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Duration(math.MaxInt64)
	}
	if d := r.DelayFrom(now); d > 0 {
		// Refused: give the token back, so waiting is what earns the next.
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
