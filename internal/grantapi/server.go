package grantapi

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/proxyproto"
)

// Server defaults. The endpoint faces the internet: every phase of a
// connection has a deadline, and the number of connections is capped.
const (
	DefaultReadHeaderTimeout = 5 * time.Second // also bounds the TLS handshake
	DefaultReadTimeout       = 10 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
	DefaultMaxHeaderBytes    = 32 << 10 // a CI token is 1-3 KiB; the verifier refuses over 16 KiB
	DefaultMaxConns          = 256
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Handler serves requests (a *Handler).
	Handler http.Handler
	// TLS is the server's TLS configuration, e.g. the first route's (its
	// certificate loader): the Server uses a copy with HTTP/1.1 as the only
	// ALPN protocol and without client-certificate requests (a CI runner
	// has none, and the token is its credential).
	TLS *tls.Config
	// Logger receives connection errors at debug level; nil means none.
	Logger *zap.Logger
	// Timeouts and limits; zero means the Default* above.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	MaxHeaderBytes                                            int
	// MaxConns caps open connections; past it Accept waits (the kernel
	// queues new ones) until one closes.
	MaxConns int
	// Balancers, when set, returns the load balancers in force (nil: none)
	// whose connections must begin with a PROXY v1 or v2 header; the
	// client it names is then the request's source. It is called at each
	// accept, so a reload can swap the set. A balancer's connection without
	// a valid header is closed, as is a health check's (a header naming no
	// client).
	Balancers func() *proxyproto.Trusted
	// ProxyHeaderTimeout returns how long to wait for that header (it also
	// never waits past the server's own read deadline); nil or zero means
	// DefaultProxyHeaderTimeout.
	ProxyHeaderTimeout func() time.Duration
	// OnProxyHeaderError is told, by proxyproto.Reason, why a balancer's
	// connection was closed without a valid header; nil means nobody.
	OnProxyHeaderError func(reason string)
}

// Server is the grant endpoint's HTTPS server.
type Server struct {
	srv       *http.Server
	tls       *tls.Config
	sem       chan struct{}
	balancers *balancerListener // nil without Balancers
}

type connKey struct{}

// ConnFromContext returns the connection a request arrived on, as the
// listener given to Serve accepted it (before TLS): the place to find a
// PROXY-protocol source. nil outside a Server.
func ConnFromContext(ctx context.Context) net.Conn {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	return c
}

// NewServer checks cfg and builds the server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("grantapi: no handler")
	}
	if cfg.TLS == nil || (len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil) {
		return nil, errors.New("grantapi: TLS with a certificate is required (the requests carry bearer tokens)")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&cfg.ReadTimeout, DefaultReadTimeout)
	def(&cfg.WriteTimeout, DefaultWriteTimeout)
	def(&cfg.IdleTimeout, DefaultIdleTimeout)
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	// TLS handshake failures and the like are the internet's noise.
	errLog, err := zap.NewStdLogAt(cfg.Logger.Named("grant_http"), zap.DebugLevel)
	if err != nil {
		return nil, err
	}
	s := &Server{tls: httpsConfig(cfg.TLS), sem: make(chan struct{}, cfg.MaxConns)}
	if cfg.Balancers != nil {
		s.balancers = &balancerListener{trusted: cfg.Balancers, timeout: func() time.Duration {
			if cfg.ProxyHeaderTimeout != nil {
				if d := cfg.ProxyHeaderTimeout(); d > 0 {
					return d
				}
			}
			return DefaultProxyHeaderTimeout
		}, onError: cfg.OnProxyHeaderError}
		if s.balancers.onError == nil {
			s.balancers.onError = func(string) {}
		}
	}
	s.srv = &http.Server{
		Handler:           cfg.Handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		// HTTP/1.1 only: one request shape needs none of HTTP/2's
		// machinery, or its denial-of-service history.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     errLog,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			// Only stores the conn: this runs in the accept loop, so it must
			// not block (a balancer's PROXY header is read later, by the
			// TLS handshake's first read, in the connection's goroutine).
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			return context.WithValue(ctx, connKey{}, c)
		},
		ConnState: s.connState,
	}
	return s, nil
}

// httpsConfig copies the gateway's TLS config for HTTPS: ALPN http/1.1
// (the postgres one would make HTTP clients fail the handshake) and no
// client-certificate request.
func httpsConfig(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.NextProtos = []string{"http/1.1"}
	c.ClientAuth = tls.NoClientCert
	c.ClientCAs = nil
	c.VerifyPeerCertificate = nil
	c.VerifyConnection = nil
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	if get := base.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hello)
			if err != nil || cc == nil {
				return cc, err
			}
			cc = cc.Clone()
			cc.GetConfigForClient = nil
			return httpsConfig(cc), nil
		}
	}
	return c
}

// Serve accepts connections on ln (plain TCP; the Server does TLS) until
// Shutdown. It returns http.ErrServerClosed after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	ln = &limitListener{Listener: ln, sem: s.sem, done: make(chan struct{})}
	if s.balancers != nil {
		b := *s.balancers
		b.Listener = ln
		ln = &b
	}
	return s.srv.Serve(tls.NewListener(ln, s.tls))
}

// Shutdown stops accepting and waits for requests in flight, until ctx
// ends; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	return err
}

// connState releases a connection slot when a connection ends.
func (s *Server) connState(_ net.Conn, st http.ConnState) {
	if st == http.StateClosed || st == http.StateHijacked {
		<-s.sem
	}
}

// limitListener takes a slot before each Accept returns, without wrapping
// the conn (net/http must see the *tls.Conn made over it, and a PROXY-aware
// conn keeps its type); connState gives the slot back.
type limitListener struct {
	net.Listener
	sem  chan struct{}
	done chan struct{}
	once sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return c, nil
}

// Close also wakes an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}
