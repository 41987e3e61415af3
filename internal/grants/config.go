package grants

import (
	"errors"
	"time"

	"go.uber.org/zap"
)

// Defaults.
const (
	DefaultMaxTTL        = 12 * time.Hour
	DefaultMaxGrants     = 10000
	DefaultSweepInterval = time.Second
)

// Config configures a Registry.
type Config struct {
	// MaxTTL caps every grant (--grant-max-ttl); default DefaultMaxTTL.
	MaxTTL time.Duration
	// MaxGrants bounds the active grants; Add refuses with ErrFull beyond
	// it. Default DefaultMaxGrants.
	MaxGrants int
	// SweepInterval is how often expired grants are removed (audit line,
	// OnExpire). Lookups stop matching at Until regardless. Default 1s.
	SweepInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the audit lines; nil means no logging.
	Logger *zap.Logger
	// Store persists grants; nil keeps them in memory only.
	Store Store
	// OnExpire is called, outside any lock, for each grant the sweeper
	// removes after its Until (not for grants that expired while the
	// gateway was down: they admitted no session of this process).
	OnExpire func(g Grant)
	// OnRevoke is called, outside any lock, for each revoked grant;
	// keepSessions is the caller's choice (grants revoke --keep-sessions).
	OnRevoke func(g Grant, keepSessions bool)
	// OnChange is called, outside any lock and after OnExpire or
	// OnRevoke, for every grant created, extended, revoked or expired by
	// this registry (not for grants found expired in the Store at start).
	// It is the one place to observe the grants change: metrics, or state
	// shared with other gateways.
	OnChange func(c Change)
}

// CheckAndSetDefaults rejects impossible values and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	var errs []error
	switch {
	case c.MaxTTL == 0:
		c.MaxTTL = DefaultMaxTTL
	case c.MaxTTL < MinTTL:
		errs = append(errs, errors.New("grants: MaxTTL must be at least 1s"))
	}
	switch {
	case c.MaxGrants == 0:
		c.MaxGrants = DefaultMaxGrants
	case c.MaxGrants < 0:
		errs = append(errs, errors.New("grants: MaxGrants must be positive"))
	}
	switch {
	case c.SweepInterval == 0:
		c.SweepInterval = DefaultSweepInterval
	case c.SweepInterval < 0:
		errs = append(errs, errors.New("grants: SweepInterval must be positive"))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return errors.Join(errs...)
}
