package crowdsec

import (
	"net/netip"
	"time"
)

// decision is one enforced CrowdSec decision.
type decision struct {
	prefix   netip.Prefix // a /32 or /128 for scope Ip
	until    time.Time
	origin   string
	scenario string
}

// index is an immutable view of the decisions for Banned: the latest end
// per prefix, and the prefix lengths in use, longest first.
type index struct {
	ends  map[netip.Prefix]time.Time
	lens4 []int
	lens6 []int
}

// buildIndex builds the index of the decisions still running at now.
func buildIndex(ds map[int64]decision, now time.Time) *index {
	ix := &index{ends: make(map[netip.Prefix]time.Time, len(ds))}
	var seen4 [33]bool
	var seen6 [129]bool
	for _, d := range ds {
		if !d.until.After(now) {
			continue
		}
		if cur, ok := ix.ends[d.prefix]; !ok || d.until.After(cur) {
			ix.ends[d.prefix] = d.until
		}
		if d.prefix.Addr().Is4() {
			seen4[d.prefix.Bits()] = true
		} else {
			seen6[d.prefix.Bits()] = true
		}
	}
	for l := 32; l >= 0; l-- {
		if seen4[l] {
			ix.lens4 = append(ix.lens4, l)
		}
	}
	for l := 128; l >= 0; l-- {
		if seen6[l] {
			ix.lens6 = append(ix.lens6, l)
		}
	}
	return ix
}

// banned reports whether ip (normalised) is covered by a decision that
// has not ended at now.
func (ix *index) banned(ip netip.Addr, now time.Time) bool {
	lens := ix.lens4
	if ip.Is6() {
		lens = ix.lens6
	}
	for _, l := range lens {
		p, err := ip.Prefix(l)
		if err != nil {
			continue
		}
		if until, ok := ix.ends[p]; ok && until.After(now) {
			return true
		}
	}
	return false
}
