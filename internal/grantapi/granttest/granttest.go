// Package granttest runs a real self-service grant endpoint for tests:
// the oidcauth verifier (key set from a file, or from an oidctest.Server),
// rules, a grants.Registry and the grantapi Server over TLS on
// 127.0.0.1:0, with a test CA, a settable clock and recording callbacks.
package granttest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fakeclock"
	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
	"github.com/pgwarden/pgwarden/internal/oidcauth/oidctest"
)

// Audience is the audience the endpoint accepts unless Options says.
const Audience = "pgwarden-test"

// DefaultRules admits acme/app's main branch as migrator to shop for at
// most 30 minutes.
const DefaultRules = `
rules:
  - name: deploy
    claims: {repository_id: "123456", ref: refs/heads/main}
    max-ttl: 30m
    users: [migrator]
    databases: [shop]
`

// Options tunes Start.
type Options struct {
	Audience string // default Audience
	// AudienceIsURL makes the audience the endpoint's own origin,
	// https://127.0.0.1:PORT: what grants request --github asks GitHub for
	// by default.
	AudienceIsURL bool
	Rules         string // YAML with a rules: key; default DefaultRules
	// Remote serves the key set over HTTP (oidctest.Serve) instead of a file.
	Remote bool
	// Handler adjusts the handler config (rate, callbacks) before use.
	Handler func(*grantapi.Config)
	// Registry adjusts the registry config.
	Registry func(*grants.Config)
	// Server adjusts the server config.
	Server func(*grantapi.ServerConfig)
	// Logger for every part; default none.
	Logger *zap.Logger
}

// Env is a running endpoint.
type Env struct {
	URL       string // https://127.0.0.1:PORT
	Audience  string
	Addr      string // 127.0.0.1:PORT
	CA        *certstest.CA
	Clock     *fakeclock.Clock
	Issuer    *oidctest.Issuer
	KeyServer *oidctest.Server // nil unless Options.Remote
	Verifier  *oidcauth.Verifier
	Registry  *grants.Registry
	Handler   *grantapi.Handler
	Server    *grantapi.Server

	mu       sync.Mutex
	failures []netip.Addr
	outcomes []grantapi.Outcome
}

// Start runs an endpoint until the test ends.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	if o.Audience == "" {
		o.Audience = Audience
	}
	if o.Rules == "" {
		o.Rules = DefaultRules
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	e := &Env{Clock: fakeclock.New(time.Now().Truncate(time.Second)), CA: certstest.NewCA(t), Audience: o.Audience}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	e.Addr = ln.Addr().String()
	e.URL = "https://" + e.Addr
	if o.AudienceIsURL {
		e.Audience = e.URL
	}

	vcfg := oidcauth.Config{Audience: e.Audience, Now: e.Clock.Now, Logger: o.Logger}
	if o.Remote {
		e.KeyServer = oidctest.Serve(t)
		e.Issuer = e.KeyServer.Issuer
		vcfg.JWKS = e.KeyServer.URL + "/jwks"
	} else {
		e.Issuer = oidctest.NewIssuer(t, "https://token.actions.githubusercontent.com")
		vcfg.JWKS = e.Issuer.WriteJWKS(t)
	}
	vcfg.Issuer = e.Issuer.URL
	if e.Verifier, err = oidcauth.NewVerifier(vcfg); err != nil {
		t.Fatalf("granttest: verifier: %v", err)
	}
	fc, err := oidcauth.ParseFileConfig([]byte(o.Rules))
	if err != nil {
		t.Fatalf("granttest: rules: %v", err)
	}
	rules, err := oidcauth.CompileRules(fc.Rules)
	if err != nil {
		t.Fatalf("granttest: rules: %v", err)
	}
	rcfg := grants.Config{Now: e.Clock.Now, Logger: o.Logger, SweepInterval: time.Hour}
	if o.Registry != nil {
		o.Registry(&rcfg)
	}
	if e.Registry, err = grants.New(rcfg); err != nil {
		t.Fatalf("granttest: registry: %v", err)
	}
	t.Cleanup(func() { _ = e.Registry.Close() })

	hcfg := grantapi.Config{
		Verifier: e.Verifier, Rules: rules, Grants: e.Registry, Now: e.Clock.Now, Logger: o.Logger,
		Replay:     oidcauth.NewReplayCache(0, e.Clock.Now),
		AuthFailed: e.recordFailure,
		OnOutcome:  e.recordOutcome,
		Burst:      1000,
	}
	if o.Handler != nil {
		o.Handler(&hcfg)
	}
	if e.Handler, err = grantapi.NewHandler(hcfg); err != nil {
		t.Fatalf("granttest: handler: %v", err)
	}

	// The gateway hands over its postgres TLS config: ALPN "postgresql"
	// and a client-certificate request, both of which the Server drops.
	cert := e.CA.ServerCertificate(t, "127.0.0.1", "localhost")
	scfg := grantapi.ServerConfig{
		Handler: e.Handler,
		TLS: &tls.Config{
			Certificates: []tls.Certificate{cert}, NextProtos: []string{"postgresql"},
			ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12,
		},
		Logger: o.Logger,
	}
	if o.Server != nil {
		o.Server(&scfg)
	}
	if e.Server, err = grantapi.NewServer(scfg); err != nil {
		t.Fatalf("granttest: server: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- e.Server.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.Server.Shutdown(ctx)
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("granttest: Serve: %v", err)
		}
	})
	return e
}

func (e *Env) recordFailure(ip netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failures = append(e.failures, ip)
}

func (e *Env) recordOutcome(o grantapi.Outcome) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.outcomes = append(e.outcomes, o)
}

// AuthFailures lists the sources reported as failed logins (one per 401).
func (e *Env) AuthFailures() []netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]netip.Addr(nil), e.failures...)
}

// Outcomes lists the outcome of every request so far.
func (e *Env) Outcomes() []grantapi.Outcome {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]grantapi.Outcome(nil), e.outcomes...)
}

// Roots is a pool with the test CA.
func (e *Env) Roots() *x509.CertPool { return e.CA.CertPool() }

// Token mints a token that DefaultRules admits, signed with alg (RS256 or
// ES256), unless mutate changes its claims.
func (e *Env) Token(t testing.TB, alg string, mutate ...func(map[string]any)) string {
	t.Helper()
	c := e.Issuer.Claims(e.Audience, e.Clock.Now())
	for _, m := range mutate {
		m(c)
	}
	return e.Issuer.Sign(t, alg, "", c)
}

// Client is an HTTPS client that trusts the test CA and leaves from
// source (e.g. "127.0.0.2"; all of 127/8 is loopback).
func (e *Env) Client(source string) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:       d.DialContext,
			TLSClientConfig:   &tls.Config{RootCAs: e.Roots(), MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
		},
	}
}

// ClientVia is Client for requests through a load balancer at balancer
// (e.g. "127.0.0.2") that begins each connection with header, a PROXY
// protocol header (nil: none).
func (e *Env) ClientVia(balancer string, header []byte) *http.Client {
	c := e.Client(balancer)
	tr := c.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil || header == nil {
			return conn, err
		}
		if _, err := conn.Write(header); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return conn, nil
	}
	return c
}
