package grantclient

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Renewal timing: ask again when a third of the grant's remaining life is
// left (and at least renewMinLead before it ends), and after a failure
// retry with a backoff from retryMin to retryMax.
const (
	renewMinLead = 30 * time.Second
	retryMin     = time.Second
	retryMax     = time.Minute
)

// Keep renews g before it expires, for as long as ctx lasts. onRenew is
// called with each new grant. Failures are logged and retried, sooner than
// the grant ends when possible, except one: a 409 says the token was used
// before, which is what a token read from an environment variable (GitLab's
// id_tokens, --token-env) always is the second time, since CI mints it once
// per job. Asking again would only repeat the refusal (and each one is a
// warning in the gateway's log), so Keep logs why and returns; the grant
// lasts until its end, which the requested ttl must put past the job's.
func (c *Client) Keep(ctx context.Context, g *Grant, log *zap.Logger, onRenew func(*Grant)) {
	if log == nil {
		log = zap.NewNop()
	}
	backoff := time.Duration(0)
	wait := renewDelay(g.Until, time.Now())
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ng, err := c.Request(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ae *APIError
			if errors.As(err, &ae) && ae.Status == http.StatusConflict {
				log.Warn("grant renewal stopped: the gateway has seen this token before (a token from an environment variable "+
					"cannot be renewed; ask for a ttl that covers the whole job)",
					zap.Error(err), zap.String("grant_id", g.ID), zap.Time("until", g.Until))
				return
			}
			backoff = min(max(2*backoff, retryMin), retryMax)
			wait = backoff
			if errors.As(err, &ae) && ae.RetryAfter > wait {
				wait = min(ae.RetryAfter, retryMax)
			}
			lvl := zap.WarnLevel
			if time.Now().After(g.Until) {
				lvl = zap.ErrorLevel // the grant has lapsed: new connections will be refused
			}
			log.Log(lvl, "grant renewal failed; retrying", zap.Error(err), zap.Time("until", g.Until), zap.Duration("retry_in", wait))
			continue
		}
		backoff = 0
		g = ng
		log.Info("grant renewed", zap.String("grant_id", g.ID), zap.String("source", g.Source), zap.Time("until", g.Until))
		if onRenew != nil {
			onRenew(g)
		}
		wait = renewDelay(g.Until, time.Now())
	}
}

// renewDelay is how long to wait before renewing a grant ending at until.
func renewDelay(until, now time.Time) time.Duration {
	left := until.Sub(now)
	lead := max(left/3, renewMinLead)
	if lead >= left {
		lead = left * 2 / 3 // a grant shorter than the lead: renew at a third of it
	}
	return max(left-lead, retryMin)
}
