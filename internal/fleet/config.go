package fleet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Defaults for the zero values of Config.
const (
	DefaultPrefix         = "pgwarden"
	DefaultTimeout        = 500 * time.Millisecond
	DefaultRetryInterval  = time.Second
	DefaultStreamMaxLen   = 10_000
	DefaultTombstoneTTL   = 24 * time.Hour
	DefaultHistoryTTL     = 24 * time.Hour
	DefaultMaxFailures    = 100
	DefaultMaxRecordBytes = 8 << 10
	DefaultBlock          = time.Second
	DefaultResyncInterval = 5 * time.Minute
)

// prefixRE: the prefix sits inside the hash tag, so it must not contain
// braces, and it is kept to characters that read well in key names.
var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// Config configures New. Field names, not flags, appear in errors; the
// caller maps them to its flags.
type Config struct {
	// URL is redis://[user:password@]host:port[/db], rediss:// for TLS, or
	// unix:///path. Ignored when Client is set.
	URL string
	// Client is an already configured client (a Cluster client, say). The
	// Store does not close it. Its timeouts and retries are the caller's.
	Client redis.UniversalClient
	// Prefix names the fleet inside the hash tag {Prefix}, so several
	// fleets can share one Redis; default "pgwarden".
	Prefix string
	// Instance identifies this gateway in the events it publishes, so
	// Watch skips its own; default host name, pid and random bytes.
	Instance string
	// Timeout bounds every call (dial, write, read); default 500ms.
	Timeout time.Duration
	// RetryInterval is how often, while Redis is down, one call may try it
	// again (the others fail at once); default 1s.
	RetryInterval time.Duration
	// HistoryTTL is how long a source's ban count outlives its last ban
	// (the jail's ban history TTL); default 24h.
	HistoryTTL time.Duration
	// TombstoneTTL is how long an unban or revoke is remembered against
	// items pushed after an outage; default 24h.
	TombstoneTTL time.Duration
	// StreamMaxLen trims the event stream (approximately); default 10000.
	StreamMaxLen int64
	// MaxFailures caps the failures kept per source and window; counts
	// saturate there. Default 100 (the jail's highest --ban-max-retry).
	MaxFailures int
	// MaxRecordBytes caps a record's JSON data; default 8 KiB.
	MaxRecordBytes int
	// Logger receives the once-per-outage warnings; default none.
	Logger *zap.Logger
	// Now is the local clock for items made here; default time.Now.
	Now func() time.Time
}

// checkAndSetDefaults validates c and fills the zero values.
func (c *Config) checkAndSetDefaults() error {
	if c.Client == nil && c.URL == "" {
		return fmt.Errorf("%w: URL: a redis:// or rediss:// URL is required", ErrConfig)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("%w: Prefix %q: use 1 to 64 letters, digits, '_', '.', ':' or '-'", ErrConfig, c.Prefix)
	}
	if c.Instance == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.Instance = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	for _, d := range []struct {
		name string
		p    *time.Duration
		def  time.Duration
	}{
		{"Timeout", &c.Timeout, DefaultTimeout},
		{"RetryInterval", &c.RetryInterval, DefaultRetryInterval},
		{"HistoryTTL", &c.HistoryTTL, DefaultHistoryTTL},
		{"TombstoneTTL", &c.TombstoneTTL, DefaultTombstoneTTL},
	} {
		if *d.p == 0 {
			*d.p = d.def
		} else if *d.p < 0 {
			return fmt.Errorf("%w: %s must be positive (got %s)", ErrConfig, d.name, *d.p)
		}
	}
	if c.StreamMaxLen == 0 {
		c.StreamMaxLen = DefaultStreamMaxLen
	} else if c.StreamMaxLen < 100 {
		return fmt.Errorf("%w: StreamMaxLen must be at least 100 (got %d)", ErrConfig, c.StreamMaxLen)
	}
	if c.MaxFailures == 0 {
		c.MaxFailures = DefaultMaxFailures
	} else if c.MaxFailures < 1 {
		return fmt.Errorf("%w: MaxFailures must be positive (got %d)", ErrConfig, c.MaxFailures)
	}
	if c.MaxRecordBytes == 0 {
		c.MaxRecordBytes = DefaultMaxRecordBytes
	} else if c.MaxRecordBytes < 1 {
		return fmt.Errorf("%w: MaxRecordBytes must be positive (got %d)", ErrConfig, c.MaxRecordBytes)
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// newClient builds the client for c.URL: every timeout is c.Timeout, no
// retries (a failed call is reported, and the caller carries on locally),
// and context deadlines apply to the socket.
func newClient(c *Config) (*redis.Client, error) {
	// url.Parse errors quote the whole URL, password included: never pass
	// them on.
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: URL is not a valid URL (expected redis://[user:password@]host:port[/db])", ErrConfig)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix" {
		return nil, fmt.Errorf("%w: URL scheme %q: use redis://, rediss:// or unix://", ErrConfig, u.Scheme)
	}
	opts, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: URL: %w", ErrConfig, err)
	}
	opts.DialTimeout = c.Timeout
	opts.ReadTimeout = c.Timeout
	opts.WriteTimeout = c.Timeout
	opts.PoolTimeout = c.Timeout
	opts.MaxRetries = -1
	opts.ContextTimeoutEnabled = true
	// No CLIENT SETINFO or maintenance-notification handshakes: fewer round
	// trips on every (re)connect, and servers before 7.2 lack SETINFO.
	opts.DisableIdentity = true
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewClient(opts), nil
}
