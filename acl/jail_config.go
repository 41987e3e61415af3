package acl

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/pgwarden/pgwarden/internal/fielderr"

	"go.uber.org/zap"
)

// Defaults mirror fail2ban's jail.conf (maxretry 5, findtime 10m, bantime
// 10m) plus its bantime.increment knobs, with the factor set to 2 so a
// repeat offender's bans double.
const (
	DefaultBanMaxRetry   = 5
	DefaultBanFindTime   = 10 * time.Minute
	DefaultBanTime       = 10 * time.Minute
	DefaultBanTimeFactor = 2.0
	DefaultBanMaxTime    = 24 * time.Hour
	DefaultIPv6Prefix    = 64
	DefaultMaxTracked    = 100_000
	DefaultJitter        = 0.05

	// maxMaxRetry bounds the per-source timestamp window, which together
	// with MaxTracked bounds the tracker's memory.
	maxMaxRetry = 100
)

// JailConfig configures NewJail. MaxRetry, FindTime, BanTime, TimeFactor and
// MaxTime are required (a zero value is an error naming its field, so a
// MaxRetry of 0 set by the operator never silently turns into the
// default); start from DefaultJailConfig when building one by hand. The
// rest default when zero.
type JailConfig struct {
	// MaxRetry failures from one source within FindTime ban it.
	MaxRetry int
	// FindTime is the sliding window failures are counted in.
	FindTime time.Duration
	// BanTime is the length of a source's first ban.
	BanTime time.Duration
	// TimeFactor multiplies each repeat ban of the same source: the nth ban
	// lasts BanTime × TimeFactor^(n-1).
	TimeFactor float64
	// MaxTime caps the escalated ban length before jitter.
	MaxTime time.Duration
	// Ignore lists sources that are never counted or banned,
	// not even by an automatic ban of the IPv6 prefix around them; nil means
	// none. Manual bans (Jail.Ban) still apply to them.
	Ignore *Allowlist
	// IPv6Prefix is the length of the extra aggregate key IPv6 sources are
	// also counted under, so an attacker rotating through its /64 is banned
	// as one; 0 means 64, 128 disables aggregation.
	IPv6Prefix int
	// MaxTracked caps the failure tracker (and the ban history): the least
	// recently failing entries are evicted first; 0 means 100000.
	MaxTracked int
	// StatePath is the bbolt file that bans and ban history persist in
	//; "" keeps everything in memory.
	StatePath string
	// StateLockTimeout bounds waiting for another process's lock on
	// StatePath; 0 means 2s.
	StateLockTimeout time.Duration
	// HistoryTTL is how long ban history outlives a source's last ban;
	// 0 means max(24h, 3×MaxTime).
	HistoryTTL time.Duration
	// Jitter adds a random 0..Jitter fraction to every automatic ban so a
	// botnet cannot predict the unban time; 0 means 0.05 (use a Rand that
	// returns 0 to disable it).
	Jitter float64
	// SweepInterval is how often expired bans are lifted in the background
	// (logged and removed from the state file); 0 means 1s. Banned does not
	// wait for it: an expired ban stops matching at once.
	SweepInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand returns a float in [0,1) for the jitter; nil means math/rand/v2.
	Rand func() float64
	// Logger receives failure and ban events; nil means none.
	Logger *zap.Logger
	// Shared, if set, is the fleet-wide state this jail shares with other
	// gateways (see shared.go); nil keeps everything local.
	Shared Shared
	// OnBan, if set, is called after each ban (automatic or manual), outside
	// the jail's locks; ip is the ban key's address (the prefix's first
	// address for an aggregate ban).
	OnBan func(ip netip.Addr, until time.Time)
	// OnLocalBan, if set, is called after each ban this jail made
	// (automatic or manual), outside the jail's locks, with the ban's key,
	// start and end. Bans applied from the fleet (ApplyBan) are not
	// reported: the gateway that made them did.
	OnLocalBan func(key netip.Prefix, at, until time.Time, failures int, manual bool)
	// OnLocalUnban, if set, is called after each successful Unban (an
	// operator's), outside the jail's locks. Unbans applied from the fleet
	// (ApplyUnban) and expiries are not reported.
	OnLocalUnban func(key netip.Prefix)
}

// DefaultJailConfig returns the flag defaults.
func DefaultJailConfig() JailConfig {
	return JailConfig{
		MaxRetry:   DefaultBanMaxRetry,
		FindTime:   DefaultBanFindTime,
		BanTime:    DefaultBanTime,
		TimeFactor: DefaultBanTimeFactor,
		MaxTime:    DefaultBanMaxTime,
	}
}

// CheckAndSetDefaults validates c, naming every bad field (all
// problems at once, joined), and fills in the optional zero values.
func (c *JailConfig) CheckAndSetDefaults() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fielderr.Errorf(format, args...)) }
	if c.MaxRetry < 1 {
		bad("%s must be at least 1 (got %d)", FieldMaxRetry, c.MaxRetry)
	} else if c.MaxRetry > maxMaxRetry {
		bad("%s must be at most %d (got %d)", FieldMaxRetry, maxMaxRetry, c.MaxRetry)
	}
	if c.FindTime <= 0 {
		bad("%s must be positive (got %s)", FieldFindTime, c.FindTime)
	}
	if c.BanTime <= 0 {
		bad("%s must be positive (got %s)", FieldBanTime, c.BanTime)
	}
	if !(c.TimeFactor >= 1) || math.IsInf(c.TimeFactor, 0) { // also rejects NaN
		bad("%s must be a finite number of at least 1 (got %g)", FieldTimeFactor, c.TimeFactor)
	}
	if c.MaxTime <= 0 {
		bad("%s must be positive (got %s)", FieldMaxTime, c.MaxTime)
	} else if c.BanTime > 0 && c.MaxTime < c.BanTime {
		bad("%s (%s) must be at least %s (%s)", FieldMaxTime, c.MaxTime, FieldBanTime, c.BanTime)
	}
	if c.IPv6Prefix == 0 {
		c.IPv6Prefix = DefaultIPv6Prefix
	} else if c.IPv6Prefix < 32 || c.IPv6Prefix > 128 {
		// Shorter than /32 would let a handful of failures ban a whole ISP.
		bad("%s must be between 32 and 128 (got %d)", FieldIPv6Prefix, c.IPv6Prefix)
	}
	if c.MaxTracked == 0 {
		c.MaxTracked = DefaultMaxTracked
	} else if c.MaxTracked < 0 {
		bad("%s must be positive (got %d)", FieldMaxTracked, c.MaxTracked)
	}
	if c.Jitter == 0 {
		c.Jitter = DefaultJitter
	} else if !(c.Jitter >= 0 && c.Jitter <= 0.5) {
		bad("ban jitter must be between 0 and 0.5 (got %g)", c.Jitter)
	}
	if c.StateLockTimeout == 0 {
		c.StateLockTimeout = 2 * time.Second
	} else if c.StateLockTimeout < 0 {
		bad("ban state lock timeout must be positive (got %s)", c.StateLockTimeout)
	}
	if c.HistoryTTL == 0 {
		c.HistoryTTL = max(24*time.Hour, 3*c.MaxTime)
	} else if c.HistoryTTL < 0 {
		bad("ban history TTL must be positive (got %s)", c.HistoryTTL)
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return errors.Join(errs...)
}

// banDuration is the length of a source's nth automatic ban:
// BanTime × TimeFactor^(n-1), capped at MaxTime, plus 0..Jitter of that.
// The jitter is added after the cap, as fail2ban adds bantime.rndtime, so
// even capped bans do not all lift at a predictable instant.
func (c *JailConfig) banDuration(n int) time.Duration {
	base := float64(c.BanTime) * math.Pow(c.TimeFactor, float64(max(n-1, 0)))
	d := c.MaxTime
	if base < float64(c.MaxTime) { // also false for +Inf
		d = time.Duration(base)
	}
	return d + time.Duration(float64(d)*c.Jitter*c.Rand())
}
