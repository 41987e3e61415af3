package acl

import (
	"container/list"
	"net/netip"
	"time"
)

// tracker counts recent failures per key in a sliding window, in bounded
// memory: at most max keys, each holding at most keep timestamps. Keys are
// kept in least-recently-failed order, so a flood from a million addresses
// evicts the oldest (and most likely already stale) entries instead of
// growing the map. It is not safe for concurrent use; the Jail's mutex
// guards it.
type tracker struct {
	max     int
	keep    int
	entries map[netip.Prefix]*list.Element
	order   list.List // of *trackEntry; front = most recent failure
}

type trackEntry struct {
	key   netip.Prefix
	times []int64 // unix nanoseconds, oldest first, at most keep of them
}

func newTracker(maxKeys, keep int) *tracker {
	return &tracker{max: maxKeys, keep: keep, entries: make(map[netip.Prefix]*list.Element)}
}

// resize changes the bounds (a reload): past max keys the least recently
// failing are evicted now, and a key holding more than keep timestamps
// keeps its newest keep.
func (t *tracker) resize(maxKeys, keep int) {
	t.max, t.keep = maxKeys, keep
	for len(t.entries) > t.max {
		t.removeElement(t.order.Back())
	}
	for el := t.order.Front(); el != nil; el = el.Next() {
		e := el.Value.(*trackEntry)
		if over := len(e.times) - keep; over > 0 {
			e.times = append(e.times[:0], e.times[over:]...)
		}
	}
}

// add records a failure for key at now and returns how many failures the
// key has in (now-window, now].
func (t *tracker) add(key netip.Prefix, now time.Time, window time.Duration) int {
	ts := now.UnixNano()
	floor := now.Add(-window).UnixNano()
	el, ok := t.entries[key]
	var e *trackEntry
	if ok {
		e = el.Value.(*trackEntry)
		t.order.MoveToFront(el)
	} else {
		e = &trackEntry{key: key, times: make([]int64, 0, min(t.keep, 4))}
		t.entries[key] = t.order.PushFront(e)
	}
	e.times = dropOlder(e.times, floor)
	if len(e.times) == t.keep {
		// Only the newest keep timestamps can decide a ban.
		e.times = append(e.times[:0], e.times[1:]...)
	}
	e.times = append(e.times, ts)
	for len(t.entries) > t.max {
		t.removeElement(t.order.Back())
	}
	return len(e.times)
}

// count returns the failures for key in (now-window, now] without
// recording one.
func (t *tracker) count(key netip.Prefix, now time.Time, window time.Duration) int {
	el, ok := t.entries[key]
	if !ok {
		return 0
	}
	floor := now.Add(-window).UnixNano()
	n := 0
	for _, ts := range el.Value.(*trackEntry).times {
		if ts > floor {
			n++
		}
	}
	return n
}

// remove forgets key (after it was banned or manually unbanned).
func (t *tracker) remove(key netip.Prefix) {
	if el, ok := t.entries[key]; ok {
		t.removeElement(el)
	}
}

// expire drops every key whose newest failure is at or before floor. The
// order list makes this O(expired): stop at the first fresh entry.
func (t *tracker) expire(floor time.Time) {
	f := floor.UnixNano()
	for el := t.order.Back(); el != nil; el = t.order.Back() {
		e := el.Value.(*trackEntry)
		if e.times[len(e.times)-1] > f {
			return
		}
		t.removeElement(el)
	}
}

func (t *tracker) len() int { return len(t.entries) }

func (t *tracker) removeElement(el *list.Element) {
	delete(t.entries, el.Value.(*trackEntry).key)
	t.order.Remove(el)
}

// dropOlder removes leading timestamps at or before floor, in place.
func dropOlder(times []int64, floor int64) []int64 {
	i := 0
	for i < len(times) && times[i] <= floor {
		i++
	}
	if i == 0 {
		return times
	}
	return append(times[:0], times[i:]...)
}
