package acl

import (
	"sync"
	"time"
)

// sampler rate-limits the accept-time rejection log so that a flood of
// denied connections cannot flood the log: in each one-second window the
// first `first` events are logged, then every `thereafter`-th. Each logged
// line carries how many were suppressed since the previous logged line, so
// the totals stay reconstructible (the counters hold the exact numbers).
type sampler struct {
	mu          sync.Mutex
	now         func() time.Time
	first       int
	thereafter  int
	windowStart time.Time
	inWindow    int
	suppressed  uint64
}

func newSampler(first, thereafter int, now func() time.Time) *sampler {
	return &sampler{first: first, thereafter: thereafter, now: now}
}

// sample reports whether to log this event and, if so, how many events
// were suppressed since the last one logged.
func (s *sampler) sample() (bool, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.windowStart) >= time.Second || now.Before(s.windowStart) {
		s.windowStart, s.inWindow = now, 0
	}
	s.inWindow++
	if s.inWindow <= s.first || (s.thereafter > 0 && (s.inWindow-s.first)%s.thereafter == 0) {
		n := s.suppressed
		s.suppressed = 0
		return true, n
	}
	s.suppressed++
	return false, 0
}
