package acl

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestJailBoundedUnderFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("drives a million addresses")
	}
	t.Parallel()
	clock := newFakeClock()
	cfg := testJailConfig(clock)
	cfg.MaxTracked = 10_000
	j := newTestJail(t, cfg)
	const n = 1_000_000
	for i := range n {
		// Half IPv4, half IPv6 from distinct /64s (two keys each).
		var a netip.Addr
		if i%2 == 0 {
			a = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		} else {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 16), byte(i >> 8), byte(i), 7: 1, 15: 1})
		}
		j.Failed(a, badPassword)
		if i%100_000 == 0 {
			clock.Advance(time.Millisecond)
		}
	}
	j.mu.RLock()
	tracked := j.tracker.len()
	j.mu.RUnlock()
	if tracked > cfg.MaxTracked {
		t.Fatalf("tracker holds %d keys after a %d-address flood, cap %d", tracked, n, cfg.MaxTracked)
	}
	if j.ActiveBans() != 0 {
		t.Fatal("single failures banned someone")
	}
	// The most recent sources are still counted: the cap evicts the oldest.
	i := n - 1
	last := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 16), byte(i >> 8), byte(i), 7: 1, 15: 1})
	for range DefaultBanMaxRetry - 1 {
		j.Failed(last, badPassword)
	}
	if !j.Banned(last) {
		t.Fatal("the newest source's failures were evicted")
	}
}

func TestJailConcurrentUse(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	cfg.StatePath = t.TempDir() + "/bans.db"
	j := newTestJail(t, cfg)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 16)})
				j.Failed(a, badPassword)
				j.Banned(a)
				if i%50 == 0 {
					j.List()
					j.sweep(g == 0)
				}
			}
		})
	}
	wg.Wait()
	if j.ActiveBans() != 16 {
		t.Fatalf("ActiveBans = %d, want 16", j.ActiveBans())
	}
}
