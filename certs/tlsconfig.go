package certs

import (
	"crypto/tls"
	"errors"
	"slices"
)

// ALPNProtocol is the IANA-registered ALPN id for PostgreSQL. libpq 17+
// sends it on every TLS handshake and requires it for sslnegotiation=direct.
const ALPNProtocol = "postgresql"

// Policy is the gateway's TLS policy: the server side and, when
// ClientCAFile is set, client-certificate authorization (see Authorizer).
type Policy struct {
	// MinVersion is tls.VersionTLS12 (also used when zero) or tls.VersionTLS13.
	MinVersion uint16

	// SessionTickets enables TLS session tickets. Off by default: libpq
	// builds a fresh SSL_CTX per connection and never resumes, pgx resumes
	// only with a ClientSessionCache nobody sets, and postgres itself
	// disables tickets (SSL_OP_NO_TICKET). Each ticket costs an extra
	// encrypted record on every handshake (see TestSessionTicketCost).
	SessionTickets bool

	// ClientCAFile (--tls-client-ca) turns on client certificates: the
	// handshake requests one and the Authorizer verifies it afterwards.
	ClientCAFile string
	// AllowCN (--tls-allow-cn) and AllowSAN (--tls-allow-san: DNS names, or
	// URIs such as spiffe://trust.domain/path) narrow which verified
	// certificates may connect. Both empty: any certificate the CA signed.
	AllowCN  []string
	AllowSAN []string
	// MapUser (--tls-map-user) entries are "IDENTITY=ROLE": a certificate
	// whose CN (or URI SAN) is IDENTITY may log in as ROLE. An identity with
	// entries may use only those roles; one without must use role == CN.
	MapUser []string
	// MapFile (--tls-map-file) holds the same as "IDENTITY ROLE" lines.
	MapFile string
	// ClientCRLFile (--tls-client-crl) holds a CRL (PEM) from each CA of
	// ClientCAFile; the certificates they list are refused.
	ClientCRLFile string
}

// AEADSuites are the TLS 1.2 suites pgwarden allows, as a server and as a
// client: ECDHE for forward secrecy and an AEAD cipher. TLS 1.3 suites are
// not configurable in Go and are all AEAD.
func AEADSuites() []uint16 { return slices.Clone(aeadSuites) }

var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ServerConfig is the one place the gateway's server tls.Config is built.
//
//   - TLS 1.2 minimum (1.3 with Policy.MinVersion), ECDHE+AEAD suites only.
//   - ALPN "postgresql": Go refuses a client offering only other protocols
//     (no_application_protocol); a client offering none still connects, so
//     for direct TLS the proxy must check NegotiatedProtocol itself.
//   - Certificates come from l.GetCertificate, so a reload changes only new
//     handshakes.
//   - No renegotiation: Go's server side never renegotiates (golang/go#36285).
//   - Full-size records from the first byte (no dynamic record sizing).
//   - With ClientCAFile, a client certificate is requested but not verified
//     here: tls.RequireAndVerifyClientCert would fail the handshake with a
//     bare alert, while the proxy should answer with FATAL 28000 naming the
//     reason. The caller MUST therefore call Authorizer.Authorize on every
//     connection; without it any certificate (or none) is accepted.
func ServerConfig(l *Loader, p Policy) (*tls.Config, error) {
	if l == nil {
		return nil, errors.New("building TLS config: no certificate loader")
	}
	minVersion := p.MinVersion
	switch minVersion {
	case 0:
		minVersion = tls.VersionTLS12
	case tls.VersionTLS12, tls.VersionTLS13:
	default:
		return nil, errorf("%s: unsupported version %#04x: use 1.2 or 1.3", FieldMinVersion, minVersion)
	}
	cfg := &tls.Config{
		MinVersion:     minVersion,
		CipherSuites:   aeadSuites,
		NextProtos:     []string{ALPNProtocol},
		GetCertificate: l.GetCertificate,
		// Tickets: see Policy.SessionTickets.
		SessionTicketsDisabled: !p.SessionTickets,
		// Records as large as the data at hand (up to 16 KiB), as postgres
		// (OpenSSL: one record per SSL_write) and stunnel send them. The
		// default cuts the first 128 KiB of every session into records of
		// about one TCP segment, growing by one segment per record: tuned
		// for a browser's first paint, it costs a record header, an AEAD
		// tag and a write per 1.2 KB here, and changes how a result reaches
		// the client (pgx's pgtype.TestDriverBytes fails on it).
		DynamicRecordSizingDisabled: true,
	}
	if p.ClientCAFile != "" {
		// Verified after the handshake by Authorizer; see above. No
		// ClientCAs either, so the CertificateRequest names no CAs and
		// clients send their one configured certificate (libpq ignores the
		// list anyway), and a CA reload needs no new tls.Config.
		cfg.ClientAuth = tls.RequestClientCert
	}
	return cfg, nil
}

// ParseMinVersion parses a minimum TLS version (FieldMinVersion): "1.2" or
// "1.3".
func ParseMinVersion(s string) (uint16, error) {
	switch s {
	case "1.2", "":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	default:
		return 0, errorf("%s %q: must be 1.2 or 1.3", FieldMinVersion, s)
	}
}
