package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Store is one gateway's handle on the fleet's shared state. It is safe for
// concurrent use. Close it when done.
type Store struct {
	cfg    Config
	rdb    redis.UniversalClient
	owned  bool // rdb was built from URL and is closed by Close
	log    *zap.Logger
	seq    atomic.Uint64 // makes failure members unique
	health health
}

// New validates cfg and builds the Store. It does not contact Redis: a
// Redis that is down at start is an outage like any other, not an error.
func New(cfg Config) (*Store, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, rdb: cfg.Client, log: cfg.Logger}
	if s.rdb == nil {
		c, err := newClient(&cfg)
		if err != nil {
			return nil, err
		}
		s.rdb, s.owned = c, true
	}
	s.health.init(cfg.RetryInterval, cfg.Logger)
	return s, nil
}

// Close closes the client New built (not one passed in Config.Client).
func (s *Store) Close() error {
	if !s.owned {
		return nil
	}
	if err := s.rdb.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("closing the redis client: %w", err)
	}
	return nil
}

// Up reports whether the last call to Redis succeeded (false before the
// first one). It is the value of the pgwarden_redis_up gauge.
func (s *Store) Up() bool { return s.health.state.Load() == stateUp }

// Instance is this gateway's id in published events.
func (s *Store) Instance() string { return s.cfg.Instance }

// key names one of the fleet's keys: "{prefix}:name".
func (s *Store) key(name string) string {
	return "{" + s.cfg.Prefix + "}:" + name
}

// call runs fn with the per-call timeout, unless Redis is down and it is
// not yet time to probe it again, and records the outcome.
func (s *Store) call(ctx context.Context, fn func(context.Context) error) error {
	if !s.health.admit(time.Now()) {
		return ErrUnavailable
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	err := fn(cctx)
	s.observe(ctx, err)
	return err
}

// observe records the outcome of a call: a server reply (even an error
// reply) means Redis is up; a network error, a timeout, or a server that
// cannot serve (loading, read-only replica, cluster down) means down. A
// cancellation by the caller's own context says nothing about Redis.
func (s *Store) observe(ctx context.Context, err error) {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		s.health.markUp()
	case ctx.Err() != nil:
	case isOutage(err):
		s.health.markDown(err)
	default:
		s.health.markUp()
	}
}

// isOutage tells errors that mean "Redis cannot serve us" from replies.
func isOutage(err error) bool {
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY "} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	var nerr net.Error
	return errors.As(err, &nerr) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// validPrefix checks a ban or failure key: a valid, masked prefix, IPv4
// unmapped, no zone, exactly as the jail normalises its keys.
func validPrefix(p netip.Prefix) error {
	if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("%w: %s is not a masked, unmapped prefix", ErrInvalid, p)
	}
	return nil
}
