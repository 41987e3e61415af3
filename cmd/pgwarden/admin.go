package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
)

// The admin endpoint (--admin) is plain HTTP without authentication, so it
// only ever listens on loopback: whoever can reach it can ban and unban.
//
//	GET    /bans        200 [{"ip": "...", "until": "RFC3339", "failures": N, "bans": N}]
//	POST   /bans        201 {"ip": ..., "until": ...}; body {"ip": "IP or CIDR", "for": "1h"} ("for" optional)
//	DELETE /bans/{ip}   204; 404 if not banned (ip may be a URL-escaped CIDR)
//	GET    /healthz     200 "ok": the process is up
//	GET    /readyz      200 "ready", or 503 with the reason (not listening, upstream down, draining)
//	GET    /metrics     Prometheus text format
//
// Errors are {"error": "..."} with 400 (bad address or duration), 403
// (non-loopback Host), 404, 415 (POST without a JSON content type), 503
// (jail closed) or 500.

// banStore is what the admin endpoint needs from the ban jail.
type banStore interface {
	List() []acl.BanInfo
	// Ban bans an address or CIDR for d; d == 0 means the next escalated ban time.
	Ban(prefixOrIP string, d time.Duration) (acl.BanInfo, error)
	// Unban lifts a ban; no such ban is an error wrapping acl.ErrNotBanned.
	Unban(prefixOrIP string) error
	ActiveBans() int
}

var _ banStore = (*acl.Jail)(nil)

// adminDeps is what the admin endpoint serves.
type adminDeps struct {
	// Bans is the jail. Required.
	Bans banStore
	// Ready returns nil when the gateway should get traffic: listening,
	// upstream answering, not draining; otherwise the reason. Required.
	Ready func() error
	// Registry is served at /metrics (promMetrics.Registry()). Required.
	Registry *prometheus.Registry
}

// defaultAdminAddr is where `pgwarden bans` looks without --admin.
const defaultAdminAddr = "127.0.0.1:9187"

// Admin HTTP limits. The endpoint is local and tiny; these only stop a
// stuck or hostile local client from holding a goroutine forever.
const (
	adminReadHeaderTimeout = 5 * time.Second
	adminReadTimeout       = 10 * time.Second
	adminWriteTimeout      = 30 * time.Second
	adminIdleTimeout       = 60 * time.Second
	adminMaxHeaderBytes    = 16 << 10
	adminMaxBodyBytes      = 4 << 10
)

// banJSON is one ban on the wire, shared by the endpoint and the CLI.
type banJSON struct {
	IP       string `json:"ip"`
	Until    string `json:"until"` // RFC3339, UTC
	Failures int    `json:"failures"`
	Bans     int    `json:"bans"`
}

// banRequest is the POST /bans body.
type banRequest struct {
	IP  string `json:"ip"`
	For string `json:"for,omitempty"` // Go duration; empty means the escalated ban time
}

// errorJSON is every error body.
type errorJSON struct {
	Error string `json:"error"`
}

// adminServer is the --admin HTTP endpoint.
type adminServer struct {
	addr string // validated bind address
	deps adminDeps
	log  *zap.Logger
	srv  *http.Server

	mu   sync.Mutex
	ln   net.Listener
	done chan struct{} // closed when Serve returns
}

// validateAdminAddr checks an --admin value and returns the address to
// bind: a literal loopback IP (127.0.0.0/8, ::1) with a port, or
// localhost:PORT, which binds 127.0.0.1 so a hosts file cannot point it
// elsewhere. Port 0 (any free port) is allowed.
func validateAdminAddr(addr string) (string, error) {
	fix := "use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT (e.g. --admin " + defaultAdminAddr + ")"
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--admin %q: expected HOST:PORT: %w; %s", addr, err, fix)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return "", fmt.Errorf("--admin %q: port %q is not a number from 0 to 65535; %s", addr, port, fix)
	}
	if strings.EqualFold(host, "localhost") {
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() || ip.Zone() != "" {
		return "", fmt.Errorf("--admin %q: the admin endpoint must listen on a loopback address, "+
			"because it has no authentication and can ban and unban sources; %s "+
			"(reach it from elsewhere through an SSH tunnel)", addr, fix)
	}
	return net.JoinHostPort(ip.Unmap().String(), port), nil
}

// newAdminServer validates addr and deps; nothing is bound until Start. A
// bad address is a configError (exit 2).
func newAdminServer(addr string, deps adminDeps, log *zap.Logger) (*adminServer, error) {
	bind, err := validateAdminAddr(addr)
	if err != nil {
		return nil, configError{err}
	}
	if deps.Bans == nil || deps.Ready == nil || deps.Registry == nil {
		return nil, errors.New("admin endpoint: Bans, Ready and Registry are required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &adminServer{addr: bind, deps: deps, log: log}
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: adminReadHeaderTimeout,
		ReadTimeout:       adminReadTimeout,
		WriteTimeout:      adminWriteTimeout,
		IdleTimeout:       adminIdleTimeout,
		MaxHeaderBytes:    adminMaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log.With(zap.String("component", "admin"))),
	}
	return s, nil
}

// Start binds the address and serves in the background. A bind failure
// (port in use) is returned.
func (s *adminServer) Start() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("--admin %s: listening: %w", s.addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.done = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("admin endpoint listening", zap.Stringer("address", ln.Addr()))
	go s.serve(ln)
	return nil
}

// serve is the admin server's goroutine.
func (s *adminServer) serve(ln net.Listener) {
	defer close(s.done)
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("admin endpoint stopped", zap.Error(err))
	}
}

// Addr is the bound address (useful with port 0); nil before Start.
func (s *adminServer) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting and waits for requests in flight until ctx is
// done. It is a no-op if Start was never called.
func (s *adminServer) Shutdown(ctx context.Context) error {
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

// handler routes the endpoint. Method mismatches get the mux's 405 with
// an Allow header; GET patterns also answer HEAD.
func (s *adminServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bans", s.listBans)
	mux.HandleFunc("POST /bans", s.ban)
	// {ip...} takes the rest of the path, so a CIDR works URL-escaped
	// (2001:db8::%2F64) or not (2001:db8::/64).
	mux.HandleFunc("DELETE /bans/{ip...}", s.unban)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.deps.Registry, promhttp.HandlerOpts{
		ErrorLog:            zap.NewStdLog(s.log.With(zap.String("component", "metrics"))),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
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
		ip, err := netip.ParseAddr(host)
		if !strings.EqualFold(host, "localhost") && (err != nil || !ip.Unmap().IsLoopback()) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("host %q is not loopback: the admin endpoint answers only to 127.0.0.1, [::1] or localhost", r.Host))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *adminServer) listBans(w http.ResponseWriter, _ *http.Request) {
	bans := s.deps.Bans.List()
	out := make([]banJSON, 0, len(bans)) // [] rather than null when empty
	for _, b := range bans {
		out = append(out, toBanJSON(b))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *adminServer) ban(w http.ResponseWriter, r *http.Request) {
	// Requiring application/json makes a browser send a CORS preflight,
	// which this endpoint never answers, so a web page cannot POST a ban
	// with a "simple" text/plain request.
	if ct := r.Header.Get("Content-Type"); !isJSONContentType(ct) {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q: send application/json", ct))
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, adminMaxBodyBytes))
	dec.DisallowUnknownFields()
	var req banRequest
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("decoding the request body: %v", err))
		return
	}
	if err := checkSource(req.IP); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var d time.Duration
	if req.For != "" {
		var err error
		if d, err = time.ParseDuration(req.For); err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("for %q: expected a positive duration such as 30m or 24h; omit it for the escalated ban time", req.For))
			return
		}
	}
	info, err := s.deps.Bans.Ban(req.IP, d)
	if err != nil {
		s.writeBanError(w, err)
		return
	}
	w.Header().Set("Location", "/bans/"+url.PathEscape(info.IP))
	writeJSON(w, http.StatusCreated, toBanJSON(info))
}

func (s *adminServer) unban(w http.ResponseWriter, r *http.Request) {
	ip := r.PathValue("ip")
	if err := checkSource(ip); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.deps.Bans.Unban(ip); err != nil {
		s.writeBanError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *adminServer) healthz(w http.ResponseWriter, _ *http.Request) {
	writeText(w, http.StatusOK, "ok")
}

func (s *adminServer) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.deps.Ready(); err != nil {
		writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
		return
	}
	writeText(w, http.StatusOK, "ready")
}

// writeBanError maps a jail error to a status. The text goes back as is:
// the only client is a local operator, and the jail's messages name the fix.
func (s *adminServer) writeBanError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, acl.ErrNotBanned):
		status = http.StatusNotFound
	case errors.Is(err, acl.ErrInvalidEntry):
		status = http.StatusBadRequest
	case errors.Is(err, acl.ErrJailClosed):
		status = http.StatusServiceUnavailable
	default:
		s.log.Error("admin ban operation failed", zap.Error(err))
	}
	writeError(w, status, err.Error())
}

// checkSource accepts what the jail can key on: an IP address or a CIDR.
// The jail applies its stricter rules (no leading zeros, host bits) after.
func checkSource(s string) error {
	if s == "" {
		return errors.New("ip is required: an IP address or CIDR prefix")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return nil
	}
	return fmt.Errorf("%q is not an IP address or CIDR prefix", s)
}

func isJSONContentType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/json")
}

// toBanJSON formats Until as RFC3339 in UTC, rounded up to the second so
// the API never claims a ban lifts sooner than it does.
func toBanJSON(b acl.BanInfo) banJSON {
	until := b.Until.UTC()
	if tr := until.Truncate(time.Second); tr.Before(until) {
		until = tr.Add(time.Second)
	}
	return banJSON{IP: b.IP, Until: until.Format(time.RFC3339), Failures: b.Failures, Bans: b.Bans}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // only our own plain structs are written
		status, body = http.StatusInternalServerError, []byte(`{"error":"encoding the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorJSON{Error: msg})
}

func writeText(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}
