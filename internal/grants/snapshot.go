package grants

import (
	"net/netip"
	"slices"
)

// snapshot is an immutable index of the grants for the accept path: grants
// by masked source prefix, and the distinct prefix lengths present per
// family, longest first, so a lookup is one map probe per length (usually
// just /32 or /128).
type snapshot struct {
	byPrefix     map[netip.Prefix][]*Grant
	lens4, lens6 []int
}

// buildSnapshot indexes gs (which it does not copy: grants are never
// modified once published). Within one prefix, route-specific grants come
// before all-route ones so Covering reports the narrower one first.
func buildSnapshot(gs map[string]*Grant) *snapshot {
	s := &snapshot{byPrefix: make(map[netip.Prefix][]*Grant, len(gs))}
	seen4, seen6 := map[int]bool{}, map[int]bool{}
	for _, g := range gs {
		p := g.Source
		s.byPrefix[p] = append(s.byPrefix[p], g)
		if p.Addr().Is4() {
			if !seen4[p.Bits()] {
				seen4[p.Bits()] = true
				s.lens4 = append(s.lens4, p.Bits())
			}
		} else if !seen6[p.Bits()] {
			seen6[p.Bits()] = true
			s.lens6 = append(s.lens6, p.Bits())
		}
	}
	for _, l := range s.byPrefix {
		slices.SortFunc(l, func(a, b *Grant) int {
			if (a.Route == "") != (b.Route == "") {
				if a.Route != "" {
					return -1
				}
				return 1
			}
			return b.Until.Compare(a.Until)
		})
	}
	desc := func(a, b int) int { return b - a }
	slices.SortFunc(s.lens4, desc)
	slices.SortFunc(s.lens6, desc)
	return s
}

// covering calls yield with each grant of route ("" grants match every
// route) whose source contains ip, most specific prefix first, until yield
// returns false. ip must be normalised. Expiry is the caller's check.
func (s *snapshot) covering(route string, ip netip.Addr, yield func(*Grant) bool) {
	lens := s.lens6
	if ip.Is4() {
		lens = s.lens4
	}
	for _, l := range lens {
		p, err := ip.Prefix(l)
		if err != nil {
			continue
		}
		for _, g := range s.byPrefix[p] {
			if g.Route != "" && g.Route != route {
				continue
			}
			if !yield(g) {
				return
			}
		}
	}
}
