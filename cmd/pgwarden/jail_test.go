package main

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/proxy"
)

// TestAuthObserverCountsOnlyCredentialFailures drives the observer with
// every kind of outcome the relay reports: only 28P01 and 28000 failures
// (outside OAuth discovery) may ban.
func TestAuthObserverCountsOnlyCredentialFailures(t *testing.T) {
	cfg, err := parseServeArgs([]string{"--ban-max-retry", "1"})
	require.NoError(t, err)
	m := newPromMetrics()
	jail, err := newJail(cfg, zap.NewNop(), m.OnBan)
	require.NoError(t, err)
	defer jail.Close()
	obs := authObserver{jail: jail, metrics: m}

	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	notCounted := []proxy.AuthOutcome{
		{Remote: ip("192.0.2.1"), Result: proxy.AuthAbandoned},
		{Remote: ip("192.0.2.2"), Result: proxy.AuthSucceeded},
		{Remote: ip("192.0.2.3"), Result: proxy.AuthFailed, SQLState: "53300"},
		{Remote: ip("192.0.2.4"), Result: proxy.AuthFailed, SQLState: "57P03"},
		{Remote: ip("192.0.2.5"), Result: proxy.AuthFailed, SQLState: "08P01"},
		{Remote: ip("192.0.2.6"), Result: proxy.AuthFailed, SQLState: "28000", Mechanism: "OAUTHBEARER"},
	}
	for _, o := range notCounted {
		obs.ObserveAuth(o)
		require.False(t, jail.Banned(o.Remote), "%+v banned", o)
	}
	for _, code := range []string{"28P01", "28000"} {
		o := proxy.AuthOutcome{Remote: ip("198.51.100.1"), Result: proxy.AuthFailed, SQLState: code, User: "u"}
		if code == "28000" {
			o.Remote = ip("198.51.100.2")
		}
		obs.ObserveAuth(o)
		require.True(t, jail.Banned(o.Remote), "%s did not ban with --ban-max-retry 1", code)
	}
}
