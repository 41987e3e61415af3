package crowdsec

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
)

// apiDecision is a decision as the LAPI sends it (models.Decision).
type apiDecision struct {
	ID       int64  `json:"id"`
	Origin   string `json:"origin"`
	Type     string `json:"type"`
	Scope    string `json:"scope"`
	Value    string `json:"value"`
	Duration string `json:"duration"`
	Scenario string `json:"scenario"`
}

// added is a decision to enforce, as decoded from "new".
type added struct {
	id       int64
	prefix   netip.Prefix
	duration time.Duration
	origin   string
	scenario string
}

// streamResponse is a decoded stream answer.
type streamResponse struct {
	added    []added
	deleted  map[int64]struct{}
	overflow int // enforceable decisions beyond the limit, not kept
	invalid  int // ban decisions with a bad id, value or duration
}

// decodeStream reads {"new": [...], "deleted": [...]} one decision at a
// time, keeping at most max enforceable new decisions and 2×max deleted
// ids, so memory stays bounded whatever the body holds. The keys may come
// in either order (the LAPI's non-chunked answer is a Go map, which
// encodes "deleted" first); deletions are applied after additions by the
// caller, so a decision created and deleted between two pulls ends up
// absent.
func decodeStream(r io.Reader, max int) (*streamResponse, error) {
	dec := json.NewDecoder(r)
	sr := &streamResponse{deleted: map[int64]struct{}{}}
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch tok {
		case "new":
			err = eachDecision(dec, func(d *apiDecision) {
				a, ok, valid := enforceable(d)
				switch {
				case !valid:
					sr.invalid++
				case !ok:
				case len(sr.added) >= max:
					sr.overflow++
				default:
					sr.added = append(sr.added, a)
				}
			})
		case "deleted":
			err = eachDecision(dec, func(d *apiDecision) {
				if d.ID != 0 && len(sr.deleted) < 2*max {
					sr.deleted[d.ID] = struct{}{}
				}
			})
		default:
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return nil, fmt.Errorf("reading %v: %w", tok, err)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	return sr, nil
}

// eachDecision decodes a JSON array (or null) of decisions one by one.
func eachDecision(dec *json.Decoder, fn func(*apiDecision)) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		return nil // "new": null when nothing changed
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("expected an array, got %v", tok)
	}
	for dec.More() {
		var d apiDecision
		if err := dec.Decode(&d); err != nil {
			return err
		}
		fn(&d)
	}
	return expectDelim(dec, ']')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != want {
		return fmt.Errorf("expected %v, got %v", want, tok)
	}
	return nil
}

// enforceable converts a decision: ok is whether it is one this bouncer
// enforces (a ban on an Ip or Range); valid is false for such a decision
// whose id, value or duration cannot be used.
func enforceable(d *apiDecision) (a added, ok, valid bool) {
	if !strings.EqualFold(d.Type, "ban") {
		return added{}, false, true
	}
	var p netip.Prefix
	switch {
	case strings.EqualFold(d.Scope, "ip"):
		ip, err := netip.ParseAddr(d.Value)
		if err != nil || ip.Zone() != "" {
			return added{}, false, false
		}
		ip = ip.Unmap()
		p = netip.PrefixFrom(ip, ip.BitLen())
	case strings.EqualFold(d.Scope, "range"):
		var err error
		if p, err = netip.ParsePrefix(d.Value); err != nil {
			return added{}, false, false
		}
		p = unmapPrefix(p.Masked())
	default:
		return added{}, false, true
	}
	dur, err := time.ParseDuration(d.Duration)
	if err != nil || d.ID == 0 {
		return added{}, false, false
	}
	if dur <= 0 {
		return added{}, false, true // already ended: nothing to enforce
	}
	return added{id: d.ID, prefix: p, duration: dur, origin: d.Origin, scenario: d.Scenario}, true, true
}

// unmapPrefix turns ::ffff:a.b.c.d/n (n ≥ 96) into a.b.c.d/(n-96), the
// form Banned's unmapped addresses match.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}
