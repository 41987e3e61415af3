package acl

import (
	"net/netip"
	"testing"
	"time"
)

func TestTrackerWindowAndEviction(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_000_000, 0)
	k := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	tr := newTracker(3, 4)

	tests := []struct {
		name string
		key  string
		at   time.Duration
		want int
	}{
		{"first", "10.0.0.1/32", 0, 1},
		{"second", "10.0.0.1/32", time.Minute, 2},
		{"other key", "10.0.0.2/32", time.Minute, 1},
		{"first drops out of window", "10.0.0.1/32", 10*time.Minute + time.Second, 2},
		{"keep caps the slice", "10.0.0.1/32", 10*time.Minute + 2*time.Second, 3},
		{"still capped", "10.0.0.1/32", 10*time.Minute + 3*time.Second, 4},
		{"never above keep", "10.0.0.1/32", 10*time.Minute + 4*time.Second, 4},
	}
	for _, tc := range tests {
		if got := tr.add(k(tc.key), t0.Add(tc.at), 10*time.Minute); got != tc.want {
			t.Fatalf("%s: add = %d, want %d", tc.name, got, tc.want)
		}
	}
	// 10.0.0.2 is now least recently failed: two new keys evict it.
	tr.add(k("10.0.0.3/32"), t0.Add(11*time.Minute), 10*time.Minute)
	tr.add(k("10.0.0.4/32"), t0.Add(11*time.Minute), 10*time.Minute)
	if tr.len() != 3 || tr.count(k("10.0.0.2/32"), t0.Add(11*time.Minute), 10*time.Minute) != 0 {
		t.Fatalf("len = %d, want 3 with 10.0.0.2 evicted", tr.len())
	}
	// expire drops keys whose newest failure left the window.
	tr.expire(t0.Add(10*time.Minute + 5*time.Second))
	if tr.len() != 2 {
		t.Fatalf("after expire len = %d, want 2", tr.len())
	}
	tr.expire(t0.Add(time.Hour))
	if tr.len() != 0 {
		t.Fatalf("after full expire len = %d, want 0", tr.len())
	}
}
