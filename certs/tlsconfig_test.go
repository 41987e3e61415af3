package certs

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
)

// testServerConfig is ServerConfig over a fresh CA's localhost pair.
func testServerConfig(t *testing.T, p Policy) (*tls.Config, *certstest.CA) {
	t.Helper()
	ca := certstest.NewCA(t)
	certFile, keyFile := writePair(t, ca, t.TempDir(), "server")
	l, err := NewLoader(certFile, keyFile, nil)
	require.NoError(t, err)
	cfg, err := ServerConfig(l, p)
	require.NoError(t, err)
	return cfg, ca
}

func TestServerConfigSuitesAreAEADWithForwardSecrecy(t *testing.T) {
	t.Parallel()
	cfg, _ := testServerConfig(t, Policy{})
	assert.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)
	assert.Equal(t, []string{"postgresql"}, cfg.NextProtos)
	assert.True(t, cfg.SessionTicketsDisabled)
	assert.Equal(t, tls.NoClientCert, cfg.ClientAuth)
	require.NotEmpty(t, cfg.CipherSuites)
	names := map[uint16]string{}
	for _, s := range tls.CipherSuites() {
		names[s.ID] = s.Name
	}
	for _, id := range cfg.CipherSuites {
		name, ok := names[id]
		require.True(t, ok, "suite %#04x is not in tls.CipherSuites() (insecure or unknown)", id)
		assert.True(t, strings.HasPrefix(name, "TLS_ECDHE_"), "%s lacks forward secrecy", name)
		assert.True(t, strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20_POLY1305"), "%s is not AEAD", name)
	}
}

func TestServerConfigHandshakes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		policy      Policy
		client      *tls.Config
		wantErr     string // substring of the client's error; "" = success
		wantVersion uint16
		wantALPN    string
	}{
		{name: "TLS 1.3 default", client: &tls.Config{}, wantVersion: tls.VersionTLS13},
		{name: "TLS 1.2 AEAD", client: &tls.Config{MaxVersion: tls.VersionTLS12}, wantVersion: tls.VersionTLS12},
		{name: "TLS 1.1 refused", client: &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, wantErr: "protocol version"},
		{
			name:    "CBC suite refused",
			client:  &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}},
			wantErr: "handshake failure",
		},
		{name: "TLS 1.2 refused with min 1.3", policy: Policy{MinVersion: tls.VersionTLS13}, client: &tls.Config{MaxVersion: tls.VersionTLS12}, wantErr: "protocol version"},
		{name: "TLS 1.3 with min 1.3", policy: Policy{MinVersion: tls.VersionTLS13}, client: &tls.Config{}, wantVersion: tls.VersionTLS13},
		{name: "ALPN postgresql", client: &tls.Config{NextProtos: []string{"postgresql"}}, wantVersion: tls.VersionTLS13, wantALPN: "postgresql"},
		{name: "ALPN postgresql among others", client: &tls.Config{NextProtos: []string{"h2", "postgresql"}}, wantVersion: tls.VersionTLS13, wantALPN: "postgresql"},
		{name: "ALPN h2 only refused", client: &tls.Config{NextProtos: []string{"h2"}}, wantErr: "no application protocol"},
		{name: "no ALPN accepted", client: &tls.Config{}, wantVersion: tls.VersionTLS13, wantALPN: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, ca := testServerConfig(t, tc.policy)
			client := tc.client.Clone()
			client.RootCAs = ca.CertPool()
			client.ServerName = "localhost"
			res := handshake(t, cfg, client)
			if tc.wantErr != "" {
				require.Error(t, res.clientErr)
				assert.Contains(t, res.clientErr.Error(), tc.wantErr)
				assert.Error(t, res.serverErr)
				return
			}
			require.NoError(t, res.clientErr)
			require.NoError(t, res.serverErr)
			assert.Equal(t, tc.wantVersion, res.client.Version)
			assert.Equal(t, tc.wantALPN, res.server.NegotiatedProtocol)
		})
	}
}

func TestServerConfigRequestsClientCertWithoutVerifying(t *testing.T) {
	t.Parallel()
	// The handshake must succeed with no certificate and with an untrusted
	// one: the Authorizer refuses later with a FATAL the client can read.
	cfg, ca := testServerConfig(t, Policy{ClientCAFile: "unused-here.crt"})
	assert.Equal(t, tls.RequestClientCert, cfg.ClientAuth)
	stranger := certstest.NewCA(t).ClientCertificate(t, "mallory")
	for _, certs := range [][]tls.Certificate{nil, {stranger}} {
		res := handshake(t, cfg, &tls.Config{RootCAs: ca.CertPool(), ServerName: "localhost", Certificates: certs})
		require.NoError(t, res.clientErr)
		require.NoError(t, res.serverErr)
		assert.Len(t, res.server.PeerCertificates, len(certs))
		assert.Empty(t, res.server.VerifiedChains)
	}
}

func TestServerConfigRejectsUnknownMinVersion(t *testing.T) {
	t.Parallel()
	certFile, keyFile := writePair(t, certstest.NewCA(t), t.TempDir(), "server")
	l, err := NewLoader(certFile, keyFile, nil)
	require.NoError(t, err)
	_, err = ServerConfig(l, Policy{MinVersion: tls.VersionTLS11})
	require.Error(t, err)
	assert.Contains(t, flagText(err), "--tls-min-version")
}

func TestParseMinVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    uint16
		wantErr string
	}{
		{"1.2", tls.VersionTLS12, ""},
		{"1.3", tls.VersionTLS13, ""},
		{"", tls.VersionTLS12, ""},
		{"1.1", 0, `--tls-min-version "1.1": must be 1.2 or 1.3`},
		{"tls1.3", 0, `--tls-min-version "tls1.3": must be 1.2 or 1.3`},
	}
	for _, tc := range tests {
		got, err := ParseMinVersion(tc.in)
		if tc.wantErr != "" {
			require.Error(t, err, tc.in)
			assert.Equal(t, tc.wantErr, flagText(err))
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

// TestSessionTicketCost is the measurement behind Policy.SessionTickets
// defaulting to off. For three kinds of client it counts what the
// server writes on two consecutive connections and whether the second
// resumed:
//
//   - no cache: pgx's default (tls.Config without ClientSessionCache). It does
//     not even offer tickets, so the server sends none either way.
//   - fresh cache per connection: libpq (a new SSL_CTX per connection),
//     which offers tickets, receives them, and never resumes. Tickets are
//     pure cost here: one extra record per handshake.
//   - shared cache: the only kind tickets help (a custom Go or JVM client).
//
// TestLibpqNeverResumes checks the libpq claim with the real psql.
func TestSessionTicketCost(t *testing.T) {
	t.Parallel()
	type clientKind struct {
		name  string
		cache func() tls.ClientSessionCache // nil: no cache
		fresh bool                          // a new cache for every connection
	}
	kinds := []clientKind{
		{name: "no cache (pgx)"},
		{name: "fresh cache (libpq)", cache: func() tls.ClientSessionCache { return tls.NewLRUClientSessionCache(4) }, fresh: true},
		{name: "shared cache", cache: func() tls.ClientSessionCache { return tls.NewLRUClientSessionCache(4) }},
	}
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, kind := range kinds {
			var without, with [2]handshakeResult
			for _, tickets := range []bool{false, true} {
				cfg, ca := testServerConfig(t, Policy{SessionTickets: tickets})
				client := &tls.Config{RootCAs: ca.CertPool(), ServerName: "localhost", MaxVersion: version}
				if kind.cache != nil {
					client.ClientSessionCache = kind.cache()
				}
				var res [2]handshakeResult
				for i := range res {
					if kind.fresh {
						client.ClientSessionCache = kind.cache()
					}
					res[i] = handshake(t, cfg, client)
					require.NoError(t, res[i].clientErr)
				}
				if tickets {
					with = res
				} else {
					without = res
				}
			}
			assert.False(t, without[1].client.DidResume, "tickets off: nobody resumes")
			assert.Equal(t, kind.name == "shared cache", with[1].client.DidResume, "tickets on: only a shared cache resumes")
			t.Logf("%s %-20s tickets off: %d records/%4d bytes; on: 1st %d/%4d, 2nd %d/%4d resumed=%v",
				tls.VersionName(version), kind.name,
				without[0].serverWrote.records, without[0].serverWrote.bytes,
				with[0].serverWrote.records, with[0].serverWrote.bytes,
				with[1].serverWrote.records, with[1].serverWrote.bytes, with[1].client.DidResume)
		}
	}
}

// TestServerConfigWritesFullRecords: one 100 kB write right after the
// handshake leaves in records of 16 KiB of plaintext, not in the small,
// slowly growing records of crypto/tls's dynamic record sizing (which would
// need about a dozen records for the same data).
func TestServerConfigWritesFullRecords(t *testing.T) {
	t.Parallel()
	const size = 100000
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			t.Parallel()
			cfg, ca := testServerConfig(t, Policy{})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			type result struct {
				lengths []int
				err     error
			}
			done := make(chan result, 1)
			go func() {
				raw, err := ln.Accept()
				if err != nil {
					done <- result{err: err}
					return
				}
				defer raw.Close()
				_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
				counting := &recordCountingConn{Conn: raw}
				conn := tls.Server(counting, cfg)
				if err := conn.Handshake(); err != nil {
					done <- result{err: err}
					return
				}
				before := len(counting.lengths)
				_, err = conn.Write(make([]byte, size))
				done <- result{lengths: counting.lengths[before:], err: err}
			}()
			raw, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			require.NoError(t, err)
			defer raw.Close()
			require.NoError(t, raw.SetDeadline(time.Now().Add(10*time.Second)))
			conn := tls.Client(raw, &tls.Config{RootCAs: ca.CertPool(), ServerName: "localhost", MaxVersion: version})
			_, err = io.ReadFull(conn, make([]byte, size))
			require.NoError(t, err)
			res := <-done
			require.NoError(t, res.err)
			// 16384 bytes of plaintext per record, plus its overhead.
			require.Len(t, res.lengths, 7, "record length fields: %v", res.lengths)
			for _, n := range res.lengths[:6] {
				require.Greater(t, n, 16384, "record length fields: %v", res.lengths)
			}
		})
	}
}
