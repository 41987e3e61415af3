package grantclient

import (
	"context"
	"errors"
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
// the grant ends when possible; they never end Keep.
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
			backoff = min(max(2*backoff, retryMin), retryMax)
			wait = backoff
			var ae *APIError
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
