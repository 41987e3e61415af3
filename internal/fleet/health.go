package fleet

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

const (
	stateUnknown int32 = iota // no call yet
	stateUp
	stateDown
)

// health is the Store's view of Redis: up, down, or not tried yet. While
// down, admit lets one call through per retry interval (a half-open
// circuit breaker), so callers fail at once instead of each waiting for a
// dial timeout, and Redis is still noticed when it returns.
type health struct {
	state     atomic.Int32
	nextProbe atomic.Int64 // UnixNano after which one call may probe
	retry     time.Duration
	log       *zap.Logger
}

func (h *health) init(retry time.Duration, log *zap.Logger) {
	h.retry, h.log = retry, log
}

// admit reports whether a call may go to Redis now.
func (h *health) admit(now time.Time) bool {
	if h.state.Load() != stateDown {
		return true
	}
	next := h.nextProbe.Load()
	return now.UnixNano() >= next && h.nextProbe.CompareAndSwap(next, now.Add(h.retry).UnixNano())
}

// markUp records a successful call; the first after an outage is logged.
func (h *health) markUp() {
	if h.state.Swap(stateUp) == stateDown {
		h.log.Info("redis available again; sharing resumes")
	}
}

// markDown records a failed call; the first failure of an outage (or of
// the process) is logged, the rest are not.
func (h *health) markDown(err error) {
	if h.state.Swap(stateDown) != stateDown {
		h.nextProbe.Store(time.Now().Add(h.retry).UnixNano())
		h.log.Warn("redis unavailable; local bans and grants stay in force, sharing paused", zap.Error(err))
	}
}
