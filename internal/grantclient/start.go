package grantclient

import (
	"context"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"
)

// StartConfig is what Start needs beyond a Client's Config.
type StartConfig struct {
	Config
	// To is the gateway, HOST:PORT: the grant is asked from the family of
	// its first address.
	To string
	// GitHub takes the token from GitHub Actions, for Audience (default:
	// the origin of URL); otherwise it is read from the environment
	// variable TokenEnv.
	GitHub   bool
	Audience string
	TokenEnv string
	// Getenv reads the environment.
	Getenv func(string) string
}

// firstGrantTimeout bounds the first grant: nothing listens before it.
const firstGrantTimeout = time.Minute

// Start obtains the first grant (before anything listens: without it the
// gateway would refuse every connection) and keeps it renewed on a
// goroutine of bg until bgCtx ends. It returns the network to dial the
// gateway with, pinned to the family of the gateway's first address: a
// grant is for the source address the server saw, so the grant request and
// the database connections must leave from the same family.
func Start(ctx, bgCtx context.Context, bg *sync.WaitGroup, sc StartConfig, log *zap.Logger) (string, error) {
	network, err := Family(ctx, sc.To)
	if err != nil {
		return "", err
	}
	cfg := sc.Config
	cfg.Network = network
	cfg.Tokens = EnvToken{Name: sc.TokenEnv, Getenv: sc.Getenv}
	if sc.GitHub {
		aud := sc.Audience
		if aud == "" {
			aud = Origin(sc.URL)
		}
		cfg.Tokens = GitHubToken{Audience: aud, Getenv: sc.Getenv}
	}
	gc, err := New(cfg)
	if err != nil {
		return "", err
	}
	rctx, cancel := context.WithTimeout(ctx, firstGrantTimeout)
	defer cancel()
	g, err := gc.Request(rctx)
	if err != nil {
		return "", err
	}
	log.Info("grant obtained", zap.String("grant_id", g.ID), zap.String("source", g.Source), zap.Time("until", g.Until),
		zap.Strings("users", g.Users), zap.Strings("databases", g.Databases))
	bg.Add(1)
	go func() {
		defer bg.Done()
		gc.Keep(bgCtx, g, log, nil)
	}()
	return network, nil
}

// Origin is scheme://host[:port] of u (u itself if it does not parse): the
// audience asked of GitHub when none is given.
func Origin(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return u
	}
	return p.Scheme + "://" + p.Host
}
