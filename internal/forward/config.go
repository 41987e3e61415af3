package forward

import (
	"context"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/clienttls"
)

// Defaults for Config.
const (
	DefaultDialTimeout    = 10 * time.Second
	DefaultStartupTimeout = 10 * time.Second
	DefaultAuthTimeout    = 2 * time.Minute
	DefaultMaxConns       = 1024
)

// Config configures a Forwarder.
type Config struct {
	// To is the gateway, HOST:PORT. HOST is resolved for each connection,
	// so a DNS change is followed without a restart.
	To string
	// Network is "tcp" (the default), or "tcp4"/"tcp6" to pin the address
	// family, e.g. to the family a grant was issued for.
	Network string
	// TLS is how the gateway is reached and verified.
	TLS clienttls.Config
	// DialTimeout bounds reaching the gateway: resolve, connect, SSLRequest
	// and the TLS handshake together.
	DialTimeout time.Duration
	// StartupTimeout bounds a local client's negotiation up to its
	// StartupMessage (or CancelRequest).
	StartupTimeout time.Duration
	// AuthTimeout bounds the gateway's side of the startup: from the
	// forwarded StartupMessage to ReadyForQuery. The gateway has its own
	// (60 s by default); this one only keeps a stuck gateway from holding a
	// local client forever.
	AuthTimeout time.Duration
	// MaxConns caps local connections at once (sessions and cancels); the
	// cancel registry is bounded by it too. At the cap a client gets FATAL
	// 53300.
	MaxConns int
	// Logger defaults to zap.NewNop().
	Logger *zap.Logger
	// dial is a test seam (DNS round robin, several source addresses);
	// nil means a net.Dialer from local (nil: the system's choice).
	dial func(ctx context.Context, network, address string, local net.Addr) (net.Conn, error)
}

// checkAndSetDefaults rejects a Config that cannot work and fills in the
// defaults.
func (c *Config) checkAndSetDefaults() error {
	if c.To == "" {
		return errors.New("forward: no gateway address (To)")
	}
	if _, _, err := net.SplitHostPort(c.To); err != nil {
		return errors.New("forward: gateway address " + c.To + ": want HOST:PORT")
	}
	if c.TLS.ServerName == "" {
		return errors.New("forward: no server name to verify the gateway's certificate against")
	}
	if c.TLS.SkipVerify {
		return errors.New("forward: refusing to relay over an unverified TLS connection")
	}
	switch c.Network {
	case "":
		c.Network = "tcp"
	case "tcp", "tcp4", "tcp6":
	default:
		return errors.New("forward: network " + c.Network + ": want tcp, tcp4 or tcp6")
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = DefaultStartupTimeout
	}
	if c.AuthTimeout <= 0 {
		c.AuthTimeout = DefaultAuthTimeout
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.dial == nil {
		c.dial = func(ctx context.Context, network, address string, local net.Addr) (net.Conn, error) {
			d := &net.Dialer{LocalAddr: local, KeepAlive: 30 * time.Second}
			return d.DialContext(ctx, network, address)
		}
	}
	return nil
}
