package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// Defaults for Config's limits. The handshake timeout bounds what an
// unauthenticated peer can hold before it has sent a StartupMessage over
// TLS; the auth timeout is postgres's own authentication_timeout.
const (
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultAuthTimeout       = 60 * time.Second
	DefaultDialTimeout       = 5 * time.Second
	DefaultMaxStartups       = 1024
	DefaultMaxStartupsPerIP  = 64
	defaultAuthMessageMaxLen = 65536   // PG_MAX_AUTH_TOKEN_LENGTH is 65535 (src/backend/libpq/auth.c)
	defaultUpstreamMaxLen    = 1 << 20 // libpq caps pre-auth ErrorResponses at 30000 bytes; leave room for ParameterStatus
)

// Upstream says where postgres listens: Network is "tcp" or "unix".
type Upstream struct {
	Network string
	Address string
	// LoopbackOnly makes every TCP dial check the address it connects to,
	// after name resolution (see Upstream.Dial).
	LoopbackOnly bool
}

// String renders the upstream for logs.
func (u Upstream) String() string { return u.Network + ":" + u.Address }

// AuthResult is how one authentication ended, as seen on the wire.
type AuthResult int

const (
	// AuthSucceeded: postgres sent AuthenticationOk.
	AuthSucceeded AuthResult = iota
	// AuthFailed: postgres sent an ErrorResponse before AuthenticationOk
	// (SQLState says why: 28P01 and 28000 are credential failures, 53300 or
	// 57P03 are not).
	AuthFailed
	// AuthAbandoned: the client closed after an authentication request, as
	// psql does before prompting for a password. Not a failure.
	AuthAbandoned
	// AuthTimedOut: the client did not answer an authentication request
	// within the step or overall deadline while postgres waited for it.
	AuthTimedOut
	// AuthBanned: the AuthGate revoked the authentication (its source was
	// banned) and the proxy cut it short.
	AuthBanned
	// AuthError: the authentication ended otherwise: the upstream was
	// unreachable or closed, or either side broke the protocol.
	AuthError
)

// String names the result for logs and metrics.
func (r AuthResult) String() string {
	switch r {
	case AuthSucceeded:
		return "succeeded"
	case AuthFailed:
		return "failed"
	case AuthAbandoned:
		return "abandoned"
	case AuthTimedOut:
		return "timed_out"
	case AuthBanned:
		return "banned"
	case AuthError:
		return "error"
	}
	return fmt.Sprintf("AuthResult(%d)", int(r))
}

// AuthOutcome reports one authentication to an AuthObserver. Remote is the
// normalised peer address (never anything the client sent); User and
// Database are the client's startup values, truncated as postgres does.
type AuthOutcome struct {
	Remote          netip.Addr
	User            string
	Database        string
	ApplicationName string
	Result          AuthResult
	SQLState        string // set when Result is AuthFailed
	Mechanism       string // SASL mechanism the client chose, if any
}

// AuthObserver receives the outcome of every authentication the gateway
// relays (once postgres was contacted), for metrics and logs; AuthGate
// applies policy. Implementations must be safe for concurrent use and must
// not block.
type AuthObserver interface {
	ObserveAuth(AuthOutcome)
}

// Authorizer decides, after TLS and the StartupMessage and before postgres is
// dialed, whether this TLS client may log in as role. The error's text is
// sent to the client as FATAL 28000, so it must be safe to show an
// unauthenticated peer.
type Authorizer interface {
	Authorize(cs *tls.ConnectionState, role string) error
	// VerifyPeer checks the client certificate alone, for a CancelRequest
	// over TLS, which names no role.
	VerifyPeer(cs *tls.ConnectionState) error
}

// Config is everything a Server needs. Listeners are handed to Serve; the
// accept-time policy lives in them (package acl), not here.
type Config struct {
	// Name labels this route in logs and metrics (e.g. "default").
	Name string
	// Upstream is the postgres server; the gateway has already checked it is local
	// unless the operator allowed a remote one.
	Upstream Upstream
	// TLS is the server TLS configuration (certs.ServerConfig). Required.
	TLS *tls.Config
	// Authorizer, if set, checks client-certificate identity against the
	// startup role.
	Authorizer Authorizer
	// StartupPolicy, if set, admits each startup by source, user and
	// database before postgres is dialed, and tags the session for
	// Server.EndSessions (startpolicy.go).
	StartupPolicy StartupPolicy
	// Observer, if set, receives every authentication outcome.
	Observer AuthObserver
	// Sources, if set, establishes each connection's client before
	// anything else is read (a trusted load balancer's PROXY header) and
	// admits it; nil takes every peer as its own client.
	Sources SourceResolver
	// AuthGate, if set, admits every authentication before postgres is
	// dialed and learns its outcome (per-source limits and bans).
	AuthGate AuthGate
	// UpstreamLimiter caps the upstream connections still authenticating,
	// per upstream; routes may share it. nil gives this server its own,
	// at DefaultMaxUpstreamStartups.
	UpstreamLimiter *UpstreamLimiter
	// Metrics, if set, receives counters; nil means none.
	Metrics Metrics
	// Logger receives structured logs; nil means none.
	Logger *zap.Logger
	// Cancels is the registry of live sessions' cancel keys. Routes of one
	// process may share it; nil gives this server its own.
	Cancels *CancelRegistry

	// HandshakeTimeout bounds accept → TLS done → StartupMessage read.
	HandshakeTimeout time.Duration
	// AuthTimeout bounds accept → authentication finished (ReadyForQuery).
	AuthTimeout time.Duration
	// AuthStepTimeout bounds each wait for the client's answer to an
	// authentication request (also capped by AuthTimeout).
	AuthStepTimeout time.Duration
	// DialTimeout bounds connecting to the upstream (also capped by AuthTimeout).
	DialTimeout time.Duration
	// MaxStartups caps connections that have not finished authentication,
	// across all sources; MaxStartupsPerIP caps them per source address.
	// Connections over either cap are closed at once: slow-loris defence.
	MaxStartups      int
	MaxStartupsPerIP int

	// CancelLimiter rate-limits cancel requests per source and counts
	// unknown keys; routes of one process should share one. nil gives this
	// server its own, with DefaultCancelLimits.
	CancelLimiter *CancelLimiter
	// PlaintextCancel says whether cancel requests may come unencrypted.
	PlaintextCancel PlaintextCancel
	// Relay chooses what relays authenticated sessions (relay.go); the
	// zero value is RelayAuto.
	Relay RelayMode
	// LogSampling bounds the lines of connections that did not become a
	// session (logsample.go); zero fields take the defaults.
	LogSampling LogSampling
}

// checkAndSetDefaults rejects a config missing required parts and fills in
// defaults, so New can trust every field afterwards.
func (c *Config) checkAndSetDefaults() error {
	var errs []error
	if c.TLS == nil {
		errs = append(errs, errors.New("proxy: TLS config is required"))
	}
	switch c.Upstream.Network {
	case "tcp", "unix":
	default:
		errs = append(errs, fmt.Errorf("proxy: upstream network %q must be tcp or unix", c.Upstream.Network))
	}
	if c.Upstream.Address == "" {
		errs = append(errs, errors.New("proxy: upstream address is required"))
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	if c.Cancels == nil {
		c.Cancels = NewCancelRegistry()
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.AuthTimeout <= 0 {
		c.AuthTimeout = DefaultAuthTimeout
	}
	if c.AuthTimeout < c.HandshakeTimeout {
		errs = append(errs, fmt.Errorf("proxy: auth timeout %s is shorter than handshake timeout %s", c.AuthTimeout, c.HandshakeTimeout))
	}
	if c.AuthStepTimeout <= 0 {
		c.AuthStepTimeout = DefaultAuthStepTimeout
	}
	if c.UpstreamLimiter == nil {
		c.UpstreamLimiter = NewUpstreamLimiter(DefaultMaxUpstreamStartups)
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.MaxStartups <= 0 {
		c.MaxStartups = DefaultMaxStartups
	}
	if c.MaxStartupsPerIP <= 0 {
		c.MaxStartupsPerIP = DefaultMaxStartupsPerIP
	}
	if c.CancelLimiter == nil {
		c.CancelLimiter, _ = NewCancelLimiter(DefaultCancelLimits()) // valid by construction
	}
	c.LogSampling.setDefaults()
	return errors.Join(errs...)
}
