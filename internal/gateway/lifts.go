package gateway

import (
	"sync"
	"time"
)

// lifts remembers what this gateway lifted (unbans, grant revocations) for
// the fleet:
//
//   - the lifts it could not publish (Redis was down), with what they need
//     to be published (V), replayed before this gateway's state is pushed
//     at the next resynchronisation. Without the replay, the fleet would
//     hand back at the resync what was lifted here during the outage (it
//     never heard of the lift), and this gateway would adopt it again.
//   - when each was lifted: an item made before that (another gateway
//     pushing, after an outage, what this one lifted meanwhile) can reach
//     the stream between that push and the replayed lift, and is stale.
//
// Both maps are bounded (maxLifts); the memory of lift times only matters
// for liftMemory.
type lifts[K comparable, V any] struct {
	now func() time.Time

	mu      sync.Mutex
	pending map[K]V
	at      map[K]time.Time
}

const (
	// maxLifts bounds each map of a lifts: past it, further lifts are not
	// replayed (the caller logs it) and reach the other gateways only
	// through expiry.
	maxLifts = 10_000
	// liftMemory is how long a lift's time is kept: longer than any event
	// takes to arrive after a resynchronisation.
	liftMemory = 10 * time.Minute
)

func newLifts[K comparable, V any]() *lifts[K, V] {
	return &lifts[K, V]{now: time.Now, pending: map[K]V{}, at: map[K]time.Time{}}
}

// lifted records that k is lifted now.
func (l *lifts[K, V]) lifted(k K) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.at) >= maxLifts {
		for key, at := range l.at {
			if now.Sub(at) > liftMemory {
				delete(l.at, key)
			}
		}
		if len(l.at) >= maxLifts {
			clear(l.at) // only the race described above is lost
		}
	}
	l.at[k] = now
}

// pend remembers a lift that could not be published; false when too many
// are pending already.
func (l *lifts[K, V]) pend(k K, v V) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.pending[k]; !ok && len(l.pending) >= maxLifts {
		return false
	}
	l.pending[k] = v
	return true
}

// renewed forgets a pending lift of k: k was made again since.
func (l *lifts[K, V]) renewed(k K) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, k)
}

// stale reports an item of k made at or before this gateway lifted k.
func (l *lifts[K, V]) stale(k K, madeAt time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.at[k]
	return ok && !madeAt.After(at)
}

// replay publishes the pending lifts with publish, in no order, and stops
// at the first failure; what failed stays pending.
func (l *lifts[K, V]) replay(publish func(K, V) error) {
	l.mu.Lock()
	todo := make(map[K]V, len(l.pending))
	for k, v := range l.pending {
		todo[k] = v
	}
	l.mu.Unlock()
	for k, v := range todo {
		if publish(k, v) != nil {
			return
		}
		l.mu.Lock()
		delete(l.pending, k)
		l.mu.Unlock()
	}
}
