// Package banpolicy is where the ban jail (acl.Jail) meets the connection
// path (proxy): which authentication outcomes count toward a ban, and how
// cancel-key guesses do. The proxy only reports outcomes through its
// AuthGate and CancelLimits hooks; the jail only counts what it is told.
package banpolicy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// Gate is the jail seen as a proxy.AuthGate: the jail admits each
// authentication (per-source slots, bans) and the gate applies the ban
// policy to its outcome. Only credential failures reported by postgres
// count toward a ban (28P01, 28000 before AuthenticationOk), and clients
// that stop answering while postgres waits (they hold a postgres slot); a
// client that left at the password prompt, a refusal of pgwarden's own, or
// an error that is not about credentials (53300, 57P03) never does. An
// OAUTHBEARER failure is not counted either: PostgreSQL 18's OAuth
// discovery step ends every first connection with 28000 by design, and
// bearer tokens are not guessable.
type Gate struct{ Jail *acl.Jail }

var _ proxy.AuthGate = Gate{}

// BeginAuth implements proxy.AuthGate.
func (g Gate) BeginAuth(ctx context.Context, remote netip.Addr) (proxy.AuthTicket, error) {
	a, err := g.Jail.BeginAuth(ctx, remote)
	if errors.Is(err, acl.ErrBanned) {
		return nil, fmt.Errorf("%w: %w", proxy.ErrSourceBanned, err)
	}
	if err != nil {
		return nil, err
	}
	return ticket{a}, nil
}

// ticket is an acl.AuthAttempt seen as a proxy.AuthTicket.
type ticket struct{ a *acl.AuthAttempt }

func (t ticket) Context() context.Context { return t.a.Context() }

func (t ticket) Done(o proxy.AuthOutcome) {
	if !CountsTowardBan(o) {
		t.a.End()
		return
	}
	f := acl.Failure{User: o.User, Database: o.Database, SQLState: o.SQLState}
	if o.Result == proxy.AuthTimedOut {
		f.Reason = "timeout"
	}
	t.a.Failed(f)
}

// CountsTowardBan is the ban policy described at Gate.
func CountsTowardBan(o proxy.AuthOutcome) bool {
	switch o.Result {
	case proxy.AuthTimedOut:
		return true
	case proxy.AuthFailed:
		return acl.CountsAsFailure(o.SQLState) && o.Mechanism != "OAUTHBEARER"
	}
	return false
}

// CancelGuesses is the proxy.CancelLimits.OnGuesses hook: every
// UnknownPerFailure cancel requests with an unknown key from a source count
// as one failed login in j. Each is a guess at a session's secret key,
// which postgres before 18 makes 32 bits long.
func CancelGuesses(j *acl.Jail) func(netip.Addr) {
	return func(remote netip.Addr) {
		j.Failed(remote, acl.Failure{Reason: "cancel_unknown_keys"})
	}
}
