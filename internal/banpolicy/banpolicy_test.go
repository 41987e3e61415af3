package banpolicy

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// TestAuthGateCountsOnlyCredentialFailures drives the gate with every kind
// of outcome the relay reports: only 28P01 and 28000 failures (outside
// OAuth discovery) and clients that stopped answering may ban.
func TestAuthGateCountsOnlyCredentialFailures(t *testing.T) {
	cfg := acl.DefaultJailConfig()
	cfg.MaxRetry = 1
	jail, err := acl.NewJail(cfg)
	require.NoError(t, err)
	defer jail.Close()
	gate := Gate{Jail: jail}
	ctx := context.Background()
	report := func(o proxy.AuthOutcome) {
		t.Helper()
		ticket, err := gate.BeginAuth(ctx, o.Remote)
		require.NoError(t, err, "%+v", o)
		ticket.Done(o)
	}

	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	notCounted := []proxy.AuthOutcome{
		{Remote: ip("192.0.2.1"), Result: proxy.AuthAbandoned},
		{Remote: ip("192.0.2.2"), Result: proxy.AuthSucceeded},
		{Remote: ip("192.0.2.3"), Result: proxy.AuthFailed, SQLState: "53300"},
		{Remote: ip("192.0.2.4"), Result: proxy.AuthFailed, SQLState: "57P03"},
		{Remote: ip("192.0.2.5"), Result: proxy.AuthFailed, SQLState: "08P01"},
		{Remote: ip("192.0.2.6"), Result: proxy.AuthFailed, SQLState: "28000", Mechanism: "OAUTHBEARER"},
		{Remote: ip("192.0.2.7"), Result: proxy.AuthBanned},
		{Remote: ip("192.0.2.8"), Result: proxy.AuthError},
	}
	for _, o := range notCounted {
		// Twice: with MaxRetry 1 the slot must have been freed.
		report(o)
		report(o)
		require.False(t, jail.Banned(o.Remote), "%+v banned", o)
	}
	counted := []proxy.AuthOutcome{
		{Remote: ip("198.51.100.1"), Result: proxy.AuthFailed, SQLState: "28P01", User: "u"},
		{Remote: ip("198.51.100.2"), Result: proxy.AuthFailed, SQLState: "28000", User: "u"},
		{Remote: ip("198.51.100.3"), Result: proxy.AuthTimedOut, User: "u"},
	}
	for _, o := range counted {
		report(o)
		require.True(t, jail.Banned(o.Remote), "%+v did not ban with MaxRetry 1", o)
		_, err := gate.BeginAuth(ctx, o.Remote)
		require.True(t, errors.Is(err, proxy.ErrSourceBanned), "banned source admitted: %v", err)
	}
}
