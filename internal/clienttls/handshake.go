package clienttls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync/atomic"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/netconn"
)

// ALPN is the IANA-registered ALPN protocol id for PostgreSQL. It is offered
// on every handshake (libpq 17+ does the same) and required for direct TLS,
// where the server must agree to it (PostgreSQL 17 backend_startup.c).
const ALPN = "postgresql"

// aeadSuites are the TLS 1.2 suites offered: those pgwarden serve
// accepts.
var aeadSuites = certs.AEADSuites()

// Config is how a client reaches a server over TLS.
type Config struct {
	// ServerName is the name the server's certificate must carry
	// (verify-full); an IP address is checked against IP SANs.
	ServerName string
	// RootCAs verify the server's chain; nil means the system roots.
	RootCAs *x509.CertPool
	// ClientCertificate returns the certificate to present when the server
	// asks for one, or nil for none. It is called on each handshake, so a
	// reloaded certificate is used from the next connection on.
	ClientCertificate func() *tls.Certificate
	// DirectTLS starts TLS at once (PostgreSQL 17's sslnegotiation=direct)
	// instead of sending an SSLRequest first.
	DirectTLS bool
	// SkipVerify leaves certificate verification to the caller, who reads
	// HandshakeInfo.State: the probe reports the handshake and the
	// certificate as separate layers. Never set it where data will flow.
	SkipVerify bool
}

// HandshakeInfo is what one handshake revealed, also when it failed.
type HandshakeInfo struct {
	// State is the connection state as of the server's certificate (nil if
	// the handshake never got that far, or verification failed first).
	State *tls.ConnectionState
	// CertRequested reports that the server asked for a client certificate.
	CertRequested bool
	// CertSent is the leaf of the certificate presented, nil if none.
	CertSent *x509.Certificate
}

// tlsConfig builds the tls.Config of one handshake, recording into info.
func (c *Config) tlsConfig(info *HandshakeInfo) *tls.Config {
	return &tls.Config{
		ServerName:         c.ServerName,
		RootCAs:            c.RootCAs,
		MinVersion:         tls.VersionTLS12,
		CipherSuites:       aeadSuites,
		NextProtos:         []string{ALPN},
		InsecureSkipVerify: c.SkipVerify, //nolint:gosec // the probe verifies by itself, see Config.SkipVerify
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			info.CertRequested = true
			var cert *tls.Certificate
			if c.ClientCertificate != nil {
				cert = c.ClientCertificate()
			}
			if cert == nil {
				return &tls.Certificate{}, nil // none: the server decides whether that is fatal
			}
			info.CertSent = cert.Leaf
			if info.CertSent == nil && len(cert.Certificate) > 0 {
				info.CertSent, _ = x509.ParseCertificate(cert.Certificate[0])
			}
			return cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			info.State = &cs
			return nil
		},
	}
}

// Handshake runs the client handshake on conn (after RequestTLS, or at once
// for direct TLS) under ctx, and attributes a failure to its layer.
func Handshake(ctx context.Context, conn net.Conn, c *Config) (*tls.Conn, *HandshakeInfo, error) {
	info := &HandshakeInfo{}
	counted := &countingConn{Conn: conn}
	tc := tls.Client(counted, c.tlsConfig(info))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, info, classifyHandshake(err, c, info, counted.read.Load())
	}
	if c.DirectTLS && tc.ConnectionState().NegotiatedProtocol != ALPN {
		_ = tc.Close()
		return nil, info, layerErr(LayerTLS, nil,
			"the server did not agree to ALPN %q, which direct TLS requires (PostgreSQL 17+ and pgwarden do; for older servers drop --direct-tls)", ALPN)
	}
	return tc, info, nil
}

// Connect runs the whole client side of encryption on a fresh connection:
// SSLRequest (unless direct TLS), then the handshake.
func Connect(ctx context.Context, conn net.Conn, c *Config) (*tls.Conn, *HandshakeInfo, error) {
	if !c.DirectTLS {
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
			defer func() { _ = conn.SetDeadline(noDeadline) }()
		}
		if _, err := RequestTLS(conn); err != nil {
			return nil, &HandshakeInfo{}, err
		}
	}
	return Handshake(ctx, conn, c)
}

// classifyHandshake attributes a failed handshake to tls, certificate,
// client-certificate, or (direct TLS reset before any byte) tcp.
func classifyHandshake(err error, c *Config, info *HandshakeInfo, bytesRead int64) error {
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		return &Error{Layer: LayerCertificate, Msg: DescribeVerifyError(cve.Err, c.ServerName), Err: nil}
	}
	if alert, ok := AlertCode(err); ok && info.CertRequested && IsClientCertAlert(alert, info.CertSent != nil) {
		return ClientCertRefused(err, info)
	}
	switch {
	case c.DirectTLS && bytesRead == 0 && netconn.IsReset(err):
		return layerErr(LayerTCP, err, "connected, then %s", ResetAtAccept)
	case netconn.IsTimeout(err) || errors.Is(err, context.DeadlineExceeded):
		return layerErr(LayerTLS, nil, "the TLS handshake did not finish in time")
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || netconn.IsReset(err):
		return layerErr(LayerTLS, err, "the server closed the connection during the TLS handshake")
	case strings.Contains(err.Error(), "unsupported protocol version") || isAlert(err, alertProtocolVersion):
		return layerErr(LayerTLS, err, "no common TLS version: this client speaks TLS 1.2 and 1.3 only, and the server offers something older")
	case strings.Contains(err.Error(), "does not look like a TLS handshake"):
		return layerErr(LayerTLS, err, "the server agreed to TLS but then did not speak TLS")
	}
	return layerErr(LayerTLS, err, "the TLS handshake failed")
}

// ClientCertRefused describes a TLS alert that refused the client's
// certificate (in the handshake under TLS 1.2, at the first read under TLS
// 1.3, where the client finishes its handshake before the server checks).
func ClientCertRefused(err error, info *HandshakeInfo) error {
	if info.CertSent == nil {
		return layerErr(LayerClientCertificate, err, "the server requires a client certificate and none was given (--sslcert and --sslkey)")
	}
	return layerErr(LayerClientCertificate, err, "the server refused the client certificate %s", describeCert(info.CertSent))
}

// TLS alert codes (RFC 8446 §6) that concern the client's certificate.
const (
	alertHandshakeFailure       = 40
	alertBadCertificate         = 42
	alertUnsupportedCertificate = 43
	alertCertificateRevoked     = 44
	alertCertificateExpired     = 45
	alertCertificateUnknown     = 46
	alertUnknownCA              = 48
	alertAccessDenied           = 49
	alertProtocolVersion        = 70
	alertCertificateRequired    = 116
)

// IsClientCertAlert reports an alert a server sends about the client's
// certificate. handshake_failure counts only when none was sent: that is
// what OpenSSL servers (postgres, stunnel) send for a missing certificate
// under TLS 1.2.
func IsClientCertAlert(code uint8, sent bool) bool {
	switch code {
	case alertBadCertificate, alertUnsupportedCertificate, alertCertificateRevoked, alertCertificateExpired,
		alertCertificateUnknown, alertUnknownCA, alertAccessDenied, alertCertificateRequired:
		return true
	case alertHandshakeFailure:
		return !sent
	}
	return false
}

// AlertCode extracts the code of a TLS alert the peer sent. crypto/tls
// reports one as a *net.OpError "remote error" around its unexported
// uint8 alert type, so the code is read by reflection.
func AlertCode(err error) (uint8, bool) {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "remote error" || oe.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(oe.Err)
	if v.Kind() != reflect.Uint8 {
		return 0, false
	}
	return uint8(v.Uint()), true
}

func isAlert(err error, code uint8) bool {
	c, ok := AlertCode(err)
	return ok && c == code
}

// countingConn counts bytes read, to tell a reset at accept (nothing ever
// came) from one in the middle of a handshake.
type countingConn struct {
	net.Conn
	read atomic.Int64
}

// Read counts what it reads.
func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// CloseWrite passes a half-close through to the socket.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
