package certs

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// writePair writes a server pair for localhost/127.0.0.1 into dir under
// name.crt / name.key and returns the paths.
func writePair(t *testing.T, ca *certstest.CA, dir, name string, opts ...certstest.Option) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := ca.ServerWith(t, []string{"localhost", "127.0.0.1"}, opts...)
	certFile = certstest.WriteFile(t, filepath.Join(dir, name+".crt"), certPEM)
	keyFile = certstest.WriteFile(t, filepath.Join(dir, name+".key"), keyPEM)
	return certFile, keyFile
}

// observedLogger records log entries at debug and above.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// handshakeResult is what both ends of one test handshake saw.
type handshakeResult struct {
	clientErr, serverErr error
	client               tls.ConnectionState
	server               tls.ConnectionState
	serverWrote          counts
}

// counts is TLS records and bytes one side wrote.
type counts struct{ records, bytes int }

// recordCountingConn counts the TLS records written through it by parsing
// the 5-byte record headers (type, version, length) in the byte stream.
type recordCountingConn struct {
	net.Conn
	pending []byte // bytes of a header or body not yet complete
	need    int    // body bytes still to skip
	c       counts
	lengths []int // each record's length field, in order
}

func (r *recordCountingConn) Write(p []byte) (int, error) {
	n, err := r.Conn.Write(p)
	r.c.bytes += n
	for b := p[:n]; len(b) > 0; {
		if r.need > 0 {
			k := min(r.need, len(b))
			r.need -= k
			b = b[k:]
			continue
		}
		k := min(5-len(r.pending), len(b))
		r.pending = append(r.pending, b[:k]...)
		b = b[k:]
		if len(r.pending) == 5 {
			r.c.records++
			r.need = int(r.pending[3])<<8 | int(r.pending[4])
			r.lengths = append(r.lengths, r.need)
			r.pending = r.pending[:0]
		}
	}
	return n, err
}

// handshake runs one TLS handshake over loopback TCP with deadlines and, if
// both sides succeed, a one-byte round trip so TLS 1.3 post-handshake
// messages (tickets) are flushed and read.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	type serverSide struct {
		err   error
		state tls.ConnectionState
		wrote counts
	}
	done := make(chan serverSide, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- serverSide{err: err}
			return
		}
		defer raw.Close()
		_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
		counting := &recordCountingConn{Conn: raw}
		conn := tls.Server(counting, serverCfg)
		err = conn.HandshakeContext(ctx)
		res := serverSide{err: err, state: conn.ConnectionState()}
		if err == nil {
			buf := make([]byte, 1)
			if _, err := conn.Read(buf); err == nil {
				_, _ = conn.Write(buf)
			}
		}
		res.wrote = counting.c
		done <- res
	}()

	raw, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	conn := tls.Client(raw, clientCfg)
	var res handshakeResult
	res.clientErr = conn.HandshakeContext(ctx)
	if res.clientErr == nil {
		res.client = conn.ConnectionState()
		if _, err := conn.Write([]byte{'x'}); err == nil {
			buf := make([]byte, 1)
			_, _ = conn.Read(buf)
		}
	} else {
		_ = raw.Close() // unblock the server if it waits for more
	}
	s := <-done
	res.serverErr, res.server, res.serverWrote = s.err, s.state, s.wrote
	return res
}

// flagText renders err the way the command line does, with its flag names
// (serve's for the TLS policy, the certs commands' for the CA operations).
func flagText(err error) string {
	return fielderr.Render(err, fielderr.Names{
		FieldCert: "--tls-cert", FieldKey: "--tls-key", FieldMinVersion: "--tls-min-version",
		FieldClientCA: "--tls-client-ca", FieldAllowCN: "--tls-allow-cn", FieldAllowSAN: "--tls-allow-san",
		FieldMapUser: "--tls-map-user", FieldMapFile: "--tls-map-file", FieldClientCRL: "--tls-client-crl",
		FieldDir: "--dir", FieldHost: "--host", FieldClient: "--client", FieldTTL: "--ttl",
		FieldReason: "--reason", FieldNextUpdate: "--next-update", FieldForce: "--force",
	})
}
