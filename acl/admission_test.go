package acl

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// grantsFake admits one address under a rule with an id, as grants will.
type grantsFake netip.Addr

func (g grantsFake) Match(ip netip.Addr) (Rule, bool) {
	if ip == netip.Addr(g) {
		return Rule{Source: "grant", ID: "g-1"}, true
	}
	return Rule{}, false
}

// denyOne refuses one address.
type denyOne struct {
	ip netip.Addr
	d  Decision
}

func (d denyOne) Deny(ip netip.Addr) (Decision, bool) { return d.d, ip == d.ip }

func TestPolicyCombinesAllowAndDenySources(t *testing.T) {
	t.Parallel()
	allow := mustAllow(t, "10.0.0.0/8", "192.0.2.1")
	granted, jailed, other := ip("198.51.100.7"), ip("10.9.9.9"), ip("10.8.8.8")
	p, err := NewPolicy(allow, []Allower{grantsFake(granted)},
		[]Denier{BannedFunc(func(a netip.Addr) bool { return a == jailed }), denyOne{other, RejectBanned}})
	require.NoError(t, err)

	v := p.Decide(ip("::ffff:10.1.2.3"))
	require.Equal(t, Verdict{Decision: Admit, Rule: Rule{Source: "allowlist", Prefix: netip.MustParsePrefix("10.0.0.0/8")}}, v)
	require.Equal(t, Rule{Source: "allowlist", Prefix: netip.MustParsePrefix("192.0.2.1/32")}, p.Decide(ip("192.0.2.1")).Rule)
	require.Equal(t, Verdict{Decision: Admit, Rule: Rule{Source: "grant", ID: "g-1"}}, p.Decide(granted))
	require.Equal(t, RejectBanned, p.Decide(jailed).Decision, "the first deny source")
	require.Equal(t, RejectBanned, p.Decide(other).Decision, "the second deny source")
	require.Equal(t, RejectNotAllowed, p.Decide(ip("203.0.113.1")).Decision)

	// A reload swaps the allowlist; the other sources stay.
	p.SetAllowlist(mustAllow(t, "203.0.113.0/24"))
	p.SetAllowlist(nil)
	require.Equal(t, RejectNotAllowed, p.Decide(ip("10.1.2.3")).Decision)
	require.Equal(t, Admit, p.Decide(ip("203.0.113.1")).Decision)
	require.Equal(t, Admit, p.Decide(granted).Decision)

	_, err = NewPolicy(nil, nil, nil)
	require.ErrorIs(t, err, ErrNoAllowlist)
}

// TestListenerDefersTrustedPeers: a peer named by Defer (a load balancer)
// is accepted undecided, and the decision on the source it names later
// goes through the same gate, counted and reset like any other.
func TestListenerDefersTrustedPeers(t *testing.T) {
	t.Parallel()
	l, err := NewListener(listen(t, "tcp4", "127.0.0.1:0"), ListenerConfig{
		Allowlist: mustAllow(t, "10.0.0.0/8"), // the balancer's own address is not in it
		Defer:     func(peer netip.Addr) bool { return peer == ip("127.0.0.1") },
	})
	require.NoError(t, err)
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for _, source := range []string{"10.1.2.3", "192.0.2.9"} {
		client, err := net.Dial("tcp4", l.Addr().String())
		require.NoError(t, err)
		defer client.Close()
		c := <-accepted
		v := l.Gate().AdmitSource(c, ip(source), true)
		if source == "10.1.2.3" {
			require.Equal(t, Admit, v.Decision)
			require.Equal(t, "10.0.0.0/8", v.Rule.Prefix.String())
			continue
		}
		require.Equal(t, RejectNotAllowed, v.Decision)
		require.NoError(t, client.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = client.Read(make([]byte, 1))
		require.Error(t, err, "a refused source's connection is closed")
	}
	na, _ := l.Rejected()
	require.EqualValues(t, 1, na)
}

// TestGateCountsOtherDenySourcesAndNamesTheBalancer: a refusal by another
// deny source (CrowdSec) carries its own reason, counts with the bans, and
// a refusal of a source a balancer named is logged with both addresses.
func TestGateCountsOtherDenySourcesAndNamesTheBalancer(t *testing.T) {
	t.Parallel()
	decided := ip("10.7.7.7")
	p, err := NewPolicy(mustAllow(t, "10.0.0.0/8"), nil, []Denier{denyOne{decided, RejectCrowdSec}})
	require.NoError(t, err)
	core, logs := observer.New(zapcore.DebugLevel)
	var reasons []Decision
	g := NewGate(p, func(d Decision, _ netip.Addr) { reasons = append(reasons, d) }, zap.New(core))
	ln := listen(t, "tcp4", "127.0.0.1:0")
	client, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	c, err := ln.Accept()
	require.NoError(t, err)

	v := g.AdmitSource(c, decided, true)
	require.Equal(t, RejectCrowdSec, v.Decision)
	require.Equal(t, "crowdsec", v.Decision.String())
	require.ErrorIs(t, v.Decision.Err(), ErrBanned)
	require.Equal(t, []Decision{RejectCrowdSec}, reasons)
	_, banned := g.Rejected()
	require.EqualValues(t, 1, banned)
	lines := logs.FilterMessage("connection rejected").All()
	require.Len(t, lines, 1)
	fields := lines[0].ContextMap()
	require.Equal(t, "crowdsec", fields["reason"])
	require.Equal(t, "10.7.7.7", fields["remote"])
	require.Equal(t, c.RemoteAddr().String(), fields["balancer"])
	require.Contains(t, Rejections(), RejectCrowdSec)
}
