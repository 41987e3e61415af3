package main

import (
	"fmt"
	"net/netip"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// newCancelLimiter builds the process's one cancel limiter (shared by the
// routes, so a source has one budget) from the --cancel-* flags. Every
// --cancel-unknown-per-failure cancel requests with an unknown key from a
// source count as one failed login in the jail: each is a guess at a
// session's secret key, which postgres before 18 makes 32 bits long.
func newCancelLimiter(c *serveConfig, jail *acl.Jail) (*proxy.CancelLimiter, error) {
	l := proxy.DefaultCancelLimits()
	l.Rate = c.CancelRate
	l.Burst = c.CancelBurst
	l.UnknownPerFailure = c.CancelUnknownPerFailure
	l.OnGuesses = func(remote netip.Addr) {
		jail.Failed(remote, acl.Failure{Reason: "cancel_unknown_keys"})
	}
	return proxy.NewCancelLimiter(l)
}

// parsePlaintextCancel reads --cancel-plaintext ("" is auto).
func parsePlaintextCancel(s string) (proxy.PlaintextCancel, error) {
	switch s {
	case "", "auto":
		return proxy.PlaintextCancelAuto, nil
	case "allow":
		return proxy.PlaintextCancelAllow, nil
	case "deny":
		return proxy.PlaintextCancelDeny, nil
	}
	return 0, fmt.Errorf("--cancel-plaintext %q: use allow, deny or auto", s)
}
