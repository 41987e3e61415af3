package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/netaddr"
	"github.com/pgwarden/pgwarden/internal/rulehits"
)

// BanStore is what the endpoint needs from the ban jail.
type BanStore interface {
	List() []acl.BanInfo
	// Ban bans an address or CIDR for d; d == 0 means the next escalated ban time.
	Ban(prefixOrIP string, d time.Duration) (acl.BanInfo, error)
	// Unban lifts a ban; no such ban is an error wrapping acl.ErrNotBanned.
	Unban(prefixOrIP string) error
}

var _ BanStore = (*acl.Jail)(nil)

// Handler is a resource another package serves on the endpoint, e.g.
// "GET /grants". It is reached only through the loopback Host check.
type Handler struct {
	Pattern string // an http.ServeMux pattern
	http.Handler
}

// Config is what the endpoint serves.
type Config struct {
	// Addr is where it listens: a loopback address (FieldAddr). Required.
	Addr string
	// Bans is the jail. Required.
	Bans BanStore
	// Ready returns nil when the gateway should get traffic: listening,
	// upstream answering, not draining; otherwise the reason. Required.
	Ready func() error
	// Registry is served at /metrics. Required.
	Registry *prometheus.Registry
	// Grants are the access grants (/grants); nil serves none.
	Grants GrantStore
	// Rules, if set, lists what each admission rule admitted (GET /rules).
	Rules func() []rulehits.Hits
	// Handlers are more resources.
	Handlers []Handler
	// Logger receives the endpoint's errors; nil means none.
	Logger *zap.Logger
}

// HTTP limits. The endpoint is local and tiny; these only stop a stuck or
// hostile local client from holding a goroutine forever.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	maxBodyBytes      = 4 << 10
)

// Server is the admin endpoint, or the read-only metrics endpoint
// (NewMetrics).
type Server struct {
	addr     string // validated bind address
	cfg      Config
	log      *zap.Logger
	srv      *http.Server
	name     string // "admin endpoint" or "metrics endpoint", for logs
	readOnly bool   // only /healthz, /readyz and /metrics

	mu   sync.Mutex
	ln   net.Listener
	done chan struct{} // closed when Serve returns
}

// New validates cfg; nothing is bound until Start. A bad address is a field
// error about FieldAddr.
func New(cfg Config) (*Server, error) {
	bind, err := ValidateAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.Bans == nil || cfg.Ready == nil || cfg.Registry == nil {
		return nil, errors.New("admin endpoint: Bans, Ready and Registry are required")
	}
	return newServer(bind, cfg, "admin endpoint", false), nil
}

// newServer builds a Server for a validated bind address.
func newServer(bind string, cfg Config, name string, readOnly bool) *Server {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{addr: bind, cfg: cfg, log: cfg.Logger, name: name, readOnly: readOnly}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          zap.NewStdLog(s.log.With(zap.String("component", "admin"))),
	}
	return s
}

// Start binds the address and serves in the background. A bind failure
// (port in use) is returned.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		field := FieldAddr
		if s.readOnly {
			field = FieldMetricsAddr
		}
		return errorf("%s %s: listening: %w", field, s.addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.done = make(chan struct{})
	s.mu.Unlock()
	s.log.Info(s.name+" listening", zap.Stringer("address", ln.Addr()))
	go s.serve(ln)
	return nil
}

// serve is the admin server's goroutine.
func (s *Server) serve(ln net.Listener) {
	defer close(s.done)
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error(s.name+" stopped", zap.Error(err))
	}
}

// Addr is the bound address (useful with port 0); nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting and waits for requests in flight until ctx is
// done. It is a no-op if Start was never called.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return nil
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutting down the admin endpoint: %w", err)
	}
	<-done
	return nil
}

// Handler routes the endpoint. Method mismatches get the mux's 405 with an
// Allow header; GET patterns also answer HEAD.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.registerHealth(mux)
	s.registerRules(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{
		ErrorLog:            zap.NewStdLog(s.log.With(zap.String("component", "metrics"))),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	if s.readOnly {
		// Nothing here changes state, so neither the loopback bind nor
		// the Host check (against DNS rebinding) is needed.
		return mux
	}
	s.registerBans(mux)
	s.registerGrants(mux)
	for _, h := range s.cfg.Handlers {
		mux.Handle(h.Pattern, h.Handler)
	}
	return loopbackHostOnly(mux)
}

// loopbackHostOnly refuses requests whose Host is not a loopback literal
// or localhost. The socket is loopback-only, but a web page in a local
// browser can still reach it by DNS rebinding (evil.example resolving to
// 127.0.0.1); its requests carry Host: evil.example.
func loopbackHostOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if _, loopback := netaddr.LoopbackIP(host); !loopback && !netaddr.IsLocalhost(host) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("host %q is not loopback: the admin endpoint answers only to 127.0.0.1, [::1] or localhost", r.Host))
			return
		}
		next.ServeHTTP(w, r)
	})
}
