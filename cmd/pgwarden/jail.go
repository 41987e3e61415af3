package main

import (
	"errors"
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

// authObserver is where the relay's view of each authentication meets the
// jail and the metrics. Only credential failures reported by postgres count
// toward a ban (28P01, 28000 before AuthenticationOk); a client that left at
// the password prompt, a refusal of pgwarden's own, or an error that is not
// about credentials (53300, 57P03) never does. An OAUTHBEARER failure is not
// counted either: PostgreSQL 18's OAuth discovery step ends every first
// connection with 28000 by design, and bearer tokens are not guessable.
type authObserver struct {
	jail    *acl.Jail
	metrics *promMetrics
}

func (o authObserver) ObserveAuth(a proxy.AuthOutcome) {
	o.metrics.ObserveAuth(a)
	if a.Result != proxy.AuthFailed || !acl.CountsAsFailure(a.SQLState) || a.Mechanism == "OAUTHBEARER" {
		return
	}
	o.jail.Failed(a.Remote, acl.Failure{User: a.User, Database: a.Database, SQLState: a.SQLState})
}
