package crowdsec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"go.uber.org/zap"
)

// Defaults for the zero values of Config.
const (
	DefaultInterval         = 10 * time.Second
	DefaultTimeout          = 10 * time.Second
	DefaultMaxDecisions     = 200_000
	DefaultMaxResponseBytes = 64 << 20
	DefaultUserAgent        = "pgwarden-bouncer/1"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid crowdsec configuration")

// Config configures New. Errors name the fields; the caller maps them to
// its flags.
type Config struct {
	// URL is the LAPI's base URL, e.g. http://127.0.0.1:8080/.
	URL string
	// KeyFile holds the bouncer API key (surrounding whitespace is
	// trimmed). It is read by New and again when the LAPI rejects the key,
	// so a rotated key is picked up without a restart.
	KeyFile string
	// Interval between pulls; default 10s.
	Interval time.Duration
	// Timeout bounds one pull, response included; default 10s.
	Timeout time.Duration
	// MaxDecisions caps the decisions held; default 200000 (CrowdSec's
	// community blocklist is a few tens of thousands).
	MaxDecisions int
	// MaxResponseBytes caps one response body; default 64 MiB.
	MaxResponseBytes int64
	// HTTPClient sends the requests (TLS settings, client certificates);
	// default a client on a clone of http.DefaultTransport.
	HTTPClient *http.Client
	// UserAgent is sent with every request; default "pgwarden-bouncer/1".
	UserAgent string
	// Logger receives outages and dropped decisions; default none.
	Logger *zap.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *Config) checkAndSetDefaults() error {
	var errs configProblems
	bad := errs.add
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		bad("URL: the LAPI URL is required (e.g. http://127.0.0.1:8080/)")
	case err != nil:
		bad("URL %q is not a valid URL", c.URL)
	case u.Scheme != "http" && u.Scheme != "https":
		bad("URL %q: use http:// or https://", c.URL)
	case u.Host == "":
		bad("URL %q has no host", c.URL)
	case u.User != nil:
		bad("URL %q: the key goes in KeyFile, not in the URL", u.Redacted())
	}
	if c.KeyFile == "" {
		bad("KeyFile: the bouncer key file is required (cscli bouncers add pgwarden)")
	} else if _, err := readKey(c.KeyFile); err != nil {
		errs = append(errs, err)
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	} else if c.Interval < 100*time.Millisecond {
		bad("Interval must be at least 100ms (got %s)", c.Interval)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	} else if c.Timeout < 0 {
		bad("Timeout must be positive (got %s)", c.Timeout)
	}
	if c.MaxDecisions == 0 {
		c.MaxDecisions = DefaultMaxDecisions
	} else if c.MaxDecisions < 0 {
		bad("MaxDecisions must be positive (got %d)", c.MaxDecisions)
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	} else if c.MaxResponseBytes < 1024 {
		bad("MaxResponseBytes must be at least 1024 (got %d)", c.MaxResponseBytes)
	}
	clientDefaults(&c.HTTPClient, &c.UserAgent, DefaultUserAgent, &c.Logger, &c.Now)
	return errs.err()
}

// configProblems collects the problems of a configuration, each wrapping
// ErrConfig.
type configProblems []error

func (p *configProblems) add(format string, args ...any) {
	*p = append(*p, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
}

func (p configProblems) err() error { return errors.Join(p...) }

// clientDefaults fills the zero values of the settings the bouncer and
// the alert pusher share.
func clientDefaults(client **http.Client, userAgent *string, defaultUA string, logger **zap.Logger, now *func() time.Time) {
	if *client == nil {
		*client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if *userAgent == "" {
		*userAgent = defaultUA
	}
	if *logger == nil {
		*logger = zap.NewNop()
	}
	if *now == nil {
		*now = time.Now
	}
}

// maxKeyFile bounds the key file read: a key is a few dozen bytes.
const maxKeyFile = 4096

// readKey reads and checks the bouncer key.
func readKey(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: KeyFile: %w", ErrConfig, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("%w: KeyFile %s: %w", ErrConfig, path, err)
	}
	if len(b) > maxKeyFile {
		return "", fmt.Errorf("%w: KeyFile %s: longer than %d bytes; it should hold only the key", ErrConfig, path, maxKeyFile)
	}
	key := bytes.TrimSpace(b)
	if len(key) == 0 {
		return "", fmt.Errorf("%w: KeyFile %s is empty; put the key from `cscli bouncers add NAME` in it", ErrConfig, path)
	}
	for _, c := range key {
		// The key goes into a header: printable ASCII only.
		if c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("%w: KeyFile %s: the key contains a space or a non-printable byte", ErrConfig, path)
		}
	}
	return string(key), nil
}
