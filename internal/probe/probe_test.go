package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/fakepg"
)

func serverTLS(t *testing.T, ca *certstest.CA, mod ...func(*tls.Config)) *tls.Config {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{ca.ServerCertificate(t, "localhost", "127.0.0.1")},
		NextProtos:   []string{clienttls.ALPN},
		MinVersion:   tls.VersionTLS12,
	}
	for _, m := range mod {
		m(cfg)
	}
	return cfg
}

func run(t *testing.T, addr string, cfg Config) *Result {
	t.Helper()
	cfg.Address = addr
	if cfg.TLS.ServerName == "" {
		cfg.TLS.ServerName = "localhost"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	res := Run(context.Background(), cfg)
	var buf bytes.Buffer
	require.NoError(t, res.WriteText(&buf))
	t.Logf("probe %s:\n%s", addr, buf.String())
	require.Equal(t, 8, strings.Count(buf.String(), "\n"), "one line per layer")
	return res
}

func TestProbeLayers(t *testing.T) {
	ca := certstest.NewCA(t)
	roots := ca.CertPool()
	clientCert := ca.ClientCertificate(t, "alice")
	withCert := func() *tls.Certificate { return &clientCert }
	requireCert12 := func(c *tls.Config) {
		c.ClientAuth, c.ClientCAs, c.MaxVersion = tls.RequireAndVerifyClientCert, ca.CertPool(), tls.VersionTLS12
	}
	requireCert13 := func(c *tls.Config) {
		c.ClientAuth, c.ClientCAs, c.MinVersion = tls.RequireAndVerifyClientCert, ca.CertPool(), tls.VersionTLS13
	}
	expiredPEM, expiredKey := ca.ServerWith(t, []string{"localhost"}, certstest.Expired())
	expired := certstest.KeyPair(t, expiredPEM, expiredKey)

	tests := []struct {
		name   string
		server fakepg.Config
		cfg    Config
		exit   int
		detail string // in the failing layer's detail (or the last ok layer's)
	}{
		{"all ok", fakepg.Config{TLS: serverTLS(t, ca)}, Config{User: "alice"}, 0, "SELECT 1 answered"},
		{"no user: auth skipped", fakepg.Config{TLS: serverTLS(t, ca)}, Config{}, 0, ""},
		{"direct TLS", fakepg.Config{Negotiation: fakepg.DirectTLS, TLS: serverTLS(t, ca)}, Config{User: "alice", TLS: clienttls.Config{DirectTLS: true}}, 0, ""},
		{"answers N", fakepg.Config{Negotiation: fakepg.AnswerN}, Config{}, 12, "'N'"},
		{"S plus injected bytes", fakepg.Config{Negotiation: fakepg.AnswerSAndExtra}, Config{}, 12, "received unencrypted data after SSL response"},
		{"S then not TLS", fakepg.Config{Negotiation: fakepg.AnswerSThenGarbage}, Config{}, 13, "did not speak TLS"},
		{"TLS 1.0 only", fakepg.Config{TLS: serverTLS(t, ca, func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 })}, Config{}, 13, "no common TLS version"},
		{"wrong name", fakepg.Config{TLS: serverTLS(t, ca)}, Config{TLS: clienttls.Config{ServerName: "db.example.com"}}, 14, `not valid for "db.example.com"`},
		{"unknown CA", fakepg.Config{TLS: serverTLS(t, ca)}, Config{TLS: clienttls.Config{RootCAs: certstest.NewCA(t).CertPool()}}, 14, "--sslrootcert"},
		{"expired", fakepg.Config{TLS: serverTLS(t, ca, func(c *tls.Config) { c.Certificates = []tls.Certificate{expired} })}, Config{}, 14, "expired"},
		{"TLS 1.2 client cert required, none sent", fakepg.Config{TLS: serverTLS(t, ca, requireCert12)}, Config{}, 15, "none was given"},
		{"TLS 1.3 client cert required, none sent, with user", fakepg.Config{TLS: serverTLS(t, ca, requireCert13)}, Config{User: "alice"}, 15, "none was given"},
		{"TLS 1.3 client cert required, none sent, no user", fakepg.Config{TLS: serverTLS(t, ca, requireCert13)}, Config{}, 15, "none was given"},
		{"TLS 1.3 client cert from another CA", fakepg.Config{TLS: serverTLS(t, ca, requireCert13)},
			Config{User: "alice", TLS: clienttls.Config{ClientCertificate: func() *tls.Certificate { c := certstest.NewCA(t).ClientCertificate(t, "mallory"); return &c }}}, 15, "refused the client certificate CN=mallory"},
		{"client cert accepted", fakepg.Config{TLS: serverTLS(t, ca, requireCert13)}, Config{User: "alice", TLS: clienttls.Config{ClientCertificate: withCert}}, 0, ""},
		{"query fails", fakepg.Config{TLS: serverTLS(t, ca), QueryError: "42501"}, Config{User: "alice"}, 17, "42501"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakepg.Start(t, tc.server)
			if tc.cfg.TLS.RootCAs == nil {
				tc.cfg.TLS.RootCAs = roots
			}
			res := run(t, srv.Addr(), tc.cfg)
			require.Equal(t, tc.exit, res.ExitStatus(), "first failure %q", res.FirstFailure())
			if tc.exit != 0 {
				l := res.layer(res.FirstFailure())
				require.Contains(t, l.Detail, tc.detail)
				// Every layer after the failure is skipped.
				after := false
				for i, l := range res.layers() {
					if after {
						require.Equal(t, StatusSkip, l.Status, clienttls.Layers[i])
					}
					after = after || l.Status == StatusFail && clienttls.Layers[i] == res.FirstFailure() && clienttls.Layers[i] != clienttls.LayerCertificate
				}
			} else if tc.detail != "" {
				require.Contains(t, res.Query.Detail, tc.detail)
			}
		})
	}
}

func TestProbeJSONShape(t *testing.T) {
	ca := certstest.NewCA(t)
	srv := fakepg.Start(t, fakepg.Config{TLS: serverTLS(t, ca)})
	res := run(t, srv.Addr(), Config{User: "alice", TLS: clienttls.Config{RootCAs: ca.CertPool()}})
	var buf bytes.Buffer
	require.NoError(t, res.WriteJSON(&buf))
	var got map[string]map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &got))
	require.Len(t, got, 8, "one member per layer")
	for _, name := range clienttls.Layers {
		require.Equal(t, "ok", got[name]["status"], name)
		require.NotEmpty(t, got[name]["detail"], name)
	}
	require.Equal(t, "S", got["negotiate"]["reply"])
	require.Equal(t, "postgresql", got["tls"]["alpn"])
	require.Equal(t, true, got["certificate"]["name_ok"])
	require.Equal(t, true, got["certificate"]["chain_ok"])
	require.Contains(t, got["certificate"]["sans"], "localhost")
	require.Equal(t, []any{"127.0.0.1"}, got["resolve"]["addresses"])
}

func TestProbeTCPFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	res := run(t, addr, Config{})
	require.Equal(t, 11, res.ExitStatus())
	require.Contains(t, res.TCP.Detail, "refused")

	// A listener that resets every connection at once, as an allowlist
	// does.
	rst, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer rst.Close()
	go func() {
		for {
			c, err := rst.Accept()
			if err != nil {
				return
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
		}
	}()
	for _, direct := range []bool{false, true} {
		res = run(t, rst.Addr().String(), Config{TLS: clienttls.Config{DirectTLS: direct}})
		require.Equal(t, 11, res.ExitStatus(), "direct=%v", direct)
		require.Contains(t, res.TCP.Detail, "a reset right after connect is what an allowlist or a ban looks like")
	}

	res = run(t, "nonexistent.invalid:5432", Config{Timeout: 5 * time.Second})
	require.Equal(t, 10, res.ExitStatus())
}
