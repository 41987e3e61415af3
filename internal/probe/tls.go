package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/netconn"
)

// alertWait is how long the probe listens for a TLS alert after a TLS 1.3
// handshake in which a client certificate was asked for, when no --user
// lets it see the server's verdict otherwise: under TLS 1.3 the client's
// handshake ends before the server has checked the certificate, and a
// server that refuses it says so in an alert right after.
const alertWait = 300 * time.Millisecond

// handshake runs TLS, then judges the certificate, and (without a user)
// what can be known about the client certificate.
func (p *prober) handshake(ctx context.Context, conn net.Conn) (*tls.Conn, *clienttls.HandshakeInfo, bool) {
	sctx, cancel := p.step(ctx)
	defer cancel()
	tc, info, err := clienttls.Handshake(sctx, conn, &p.tls)
	if err != nil {
		switch clienttls.LayerOf(err) {
		case clienttls.LayerTCP: // direct TLS, reset before any byte
			p.resetAtAccept()
			return nil, info, false
		case clienttls.LayerClientCertificate:
			// Refused in the handshake (TLS 1.2): the server's side of it
			// was seen and can still be reported.
			if info.State != nil {
				p.reportTLS(info.State)
				p.reportCertificate(info.State)
			}
			p.res.ClientCertificate.Requested = true
			p.res.ClientCertificate.Sent = sentName(info)
			p.failErr(err, clienttls.LayerClientCertificate)
			return nil, info, false
		}
		p.failErr(err, clienttls.LayerTLS)
		return nil, info, false
	}
	cs := tc.ConnectionState()
	p.reportTLS(&cs)
	if !p.reportCertificate(&cs) {
		_ = tc.Close()
		return nil, info, false
	}
	p.res.ClientCertificate.Requested = info.CertRequested
	p.res.ClientCertificate.Sent = sentName(info)
	if p.cfg.User == "" {
		p.clientCertWithoutStartup(tc, info)
		if p.res.ClientCertificate.Status == StatusFail {
			_ = tc.Close()
			return nil, info, false
		}
	}
	return tc, info, true
}

func (p *prober) reportTLS(cs *tls.ConnectionState) {
	alpn := cs.NegotiatedProtocol
	shown := alpn
	if shown == "" {
		shown = "none"
	}
	p.res.TLS.Version, p.res.TLS.Cipher, p.res.TLS.ALPN = tlsVersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), alpn
	p.ok(clienttls.LayerTLS, fmt.Sprintf("%s, %s, ALPN %s", p.res.TLS.Version, p.res.TLS.Cipher, shown))
}

// reportCertificate judges the server's certificate: the name (verify-full)
// and the chain against the given roots, each reported separately.
func (p *prober) reportCertificate(cs *tls.ConnectionState) bool {
	c := &p.res.Certificate
	if len(cs.PeerCertificates) == 0 {
		p.fail(clienttls.LayerCertificate, "the server sent no certificate")
		return false
	}
	leaf := cs.PeerCertificates[0]
	now := time.Now()
	days := clienttls.DaysLeft(leaf, now)
	notAfter := leaf.NotAfter.UTC()
	c.Subject, c.Issuer, c.SANs = leaf.Subject.String(), leaf.Issuer.String(), clienttls.CertNames(leaf)
	c.NotAfter, c.DaysLeft, c.ServerName = &notAfter, &days, p.tls.ServerName

	nameErr := leaf.VerifyHostname(p.tls.ServerName)
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	_, chainErr := leaf.Verify(x509.VerifyOptions{
		Roots:         p.tls.RootCAs,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	nameOK, chainOK := nameErr == nil, chainErr == nil
	c.NameOK, c.ChainOK = &nameOK, &chainOK

	roots := "the system roots"
	switch {
	case p.cfg.RootCAFile != "":
		roots = p.cfg.RootCAFile
	case p.tls.RootCAs != nil:
		roots = "the given CA certificates"
	}
	facts := fmt.Sprintf("subject %s, issuer %s, names %s, %s", c.Subject, c.Issuer, strings.Join(c.SANs, ", "), daysText(days))
	var verdicts []string
	if nameOK {
		verdicts = append(verdicts, fmt.Sprintf("name %q matches", p.tls.ServerName))
	} else {
		verdicts = append(verdicts, clienttls.DescribeVerifyError(nameErr, p.tls.ServerName))
	}
	if chainOK {
		verdicts = append(verdicts, "chain verified against "+roots)
	} else {
		verdicts = append(verdicts, clienttls.DescribeVerifyError(chainErr, p.tls.ServerName)+" (checked against "+roots+")")
	}
	detail := facts + "; " + strings.Join(verdicts, "; ")
	if !nameOK || !chainOK {
		p.fail(clienttls.LayerCertificate, detail+"; nothing more is sent to an unverified server")
		return false
	}
	p.ok(clienttls.LayerCertificate, detail)
	return true
}

func daysText(days int) string {
	plural := func(n int) string {
		if n == 1 {
			return "1 day"
		}
		return fmt.Sprintf("%d days", n)
	}
	switch {
	case days < 0:
		return "expired"
	case days < 14:
		return plural(days) + " left (renew it soon)"
	}
	return plural(days) + " left"
}

func sentName(info *clienttls.HandshakeInfo) string {
	if info == nil || info.CertSent == nil {
		return ""
	}
	return clienttls.DescribeCert(info.CertSent)
}

// clientCertWithoutStartup reports the client certificate when no startup
// will follow to show the server's verdict.
func (p *prober) clientCertWithoutStartup(tc *tls.Conn, info *clienttls.HandshakeInfo) {
	sent := info.CertSent != nil
	given := p.tls.ClientCertificate != nil && p.tls.ClientCertificate() != nil
	if !info.CertRequested {
		detail := "not requested by the server"
		if given {
			detail += " (the --sslcert given was not sent)"
		}
		p.ok(clienttls.LayerClientCertificate, detail)
		return
	}
	if tc.ConnectionState().Version == tls.VersionTLS13 {
		if err := waitForAlert(tc); err != nil {
			if alert, ok := clienttls.AlertCode(err); ok && clienttls.IsClientCertAlert(alert, sent) {
				p.failErr(clienttls.ClientCertRefused(err, info), clienttls.LayerClientCertificate)
				return
			}
			if errors.Is(err, io.EOF) {
				p.fail(clienttls.LayerClientCertificate, "the server asked for a client certificate and closed the connection right after the handshake (it probably refused it)")
				return
			}
		}
	}
	if sent {
		p.ok(clienttls.LayerClientCertificate, fmt.Sprintf("requested; sent %s, not refused in the handshake (a server that checks it after the startup, as pgwarden does, shows its verdict only with --user)", sentName(info)))
		return
	}
	p.skip(clienttls.LayerClientCertificate, "requested by the server, none given (--sslcert/--sslkey): whether one is required shows only after the startup; add --user")
}

// waitForAlert reads briefly for a post-handshake alert; nil if none came.
func waitForAlert(tc *tls.Conn) error {
	_ = tc.SetReadDeadline(time.Now().Add(alertWait))
	defer func() { _ = tc.SetReadDeadline(time.Time{}) }()
	var b [1]byte
	_, err := tc.Read(b[:])
	if err == nil || netconn.IsTimeout(err) {
		return nil
	}
	return err
}
