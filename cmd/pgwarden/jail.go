package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// newJail builds the ban jail from the --ban-* flags. Problems with the
// flags are configError (exit 2); a state file locked by another process is
// a runtime error.
func newJail(c *serveConfig, log *zap.Logger, onBan func(ip netip.Addr, until time.Time)) (*acl.Jail, error) {
	ignore, err := acl.ParseList("--ban-ignore", c.BanIgnore)
	if err != nil {
		return nil, configError{err}
	}
	jcfg := acl.DefaultJailConfig()
	jcfg.MaxRetry = c.BanMaxRetry
	jcfg.FindTime = c.BanFindTime
	jcfg.BanTime = c.BanTime
	jcfg.TimeFactor = c.BanTimeFactor
	jcfg.MaxTime = c.BanMaxTime
	jcfg.Ignore = ignore
	jcfg.IPv6Prefix = c.BanIPv6Prefix
	jcfg.MaxTracked = c.BanMaxTracked
	jcfg.StatePath = c.BanState
	jcfg.Logger = log.With(zap.String("component", "jail"))
	jcfg.OnBan = onBan
	if err := jcfg.CheckAndSetDefaults(); err != nil {
		return nil, configError{err}
	}
	j, err := acl.NewJail(jcfg)
	if err != nil {
		if errors.Is(err, acl.ErrStateLocked) {
			return nil, err
		}
		return nil, configError{err}
	}
	return j, nil
}

// authGate is where the relay meets the jail: the jail admits each
// authentication (per-source limits, bans) and the gate applies the ban
// policy to its outcome. Only credential failures reported by postgres
// count toward a ban (28P01, 28000 before AuthenticationOk), and clients
// that stop answering while postgres waits (they hold a postgres slot); a
// client that left at the password prompt, a refusal of pgwarden's own, or
// an error that is not about credentials (53300, 57P03) never does. An
// OAUTHBEARER failure is not counted either: PostgreSQL 18's OAuth
// discovery step ends every first connection with 28000 by design, and
// bearer tokens are not guessable.
type authGate struct{ jail *acl.Jail }

// BeginAuth implements proxy.AuthGate.
func (g authGate) BeginAuth(ctx context.Context, remote netip.Addr) (proxy.AuthTicket, error) {
	a, err := g.jail.BeginAuth(ctx, remote)
	if errors.Is(err, acl.ErrBanned) {
		return nil, fmt.Errorf("%w: %w", proxy.ErrSourceBanned, err)
	}
	if err != nil {
		return nil, err
	}
	return authTicket{a}, nil
}

// authTicket is an acl.AuthAttempt seen as a proxy.AuthTicket.
type authTicket struct{ a *acl.AuthAttempt }

func (t authTicket) Context() context.Context { return t.a.Context() }

func (t authTicket) Done(o proxy.AuthOutcome) {
	if !countsTowardBan(o) {
		t.a.End()
		return
	}
	f := acl.Failure{User: o.User, Database: o.Database, SQLState: o.SQLState}
	if o.Result == proxy.AuthTimedOut {
		f.Reason = "timeout"
	}
	t.a.Failed(f)
}

// countsTowardBan is the ban policy described at authGate.
func countsTowardBan(o proxy.AuthOutcome) bool {
	switch o.Result {
	case proxy.AuthTimedOut:
		return true
	case proxy.AuthFailed:
		return acl.CountsAsFailure(o.SQLState) && o.Mechanism != "OAUTHBEARER"
	}
	return false
}
