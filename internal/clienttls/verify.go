package clienttls

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"
)

var noDeadline time.Time

// DescribeVerifyError turns a certificate verification failure into advice
// naming what to change (the name connected to, --server-name, or
// --sslrootcert).
func DescribeVerifyError(err error, serverName string) string {
	// crypto/x509 returns these three as values, not pointers.
	var he x509.HostnameError
	if errors.As(err, &he) && he.Certificate != nil {
		return fmt.Sprintf("the certificate is not valid for %q: it names %s (connect with one of those names, or set --server-name)",
			serverName, strings.Join(CertNames(he.Certificate), ", "))
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) && ua.Cert != nil {
		return fmt.Sprintf("the certificate (issued by %q) does not chain to a trusted CA: give the CA that signed the server's certificate with --sslrootcert",
			ua.Cert.Issuer.String())
	}
	var ci x509.CertificateInvalidError
	if errors.As(err, &ci) && ci.Cert != nil {
		switch ci.Reason {
		case x509.Expired:
			now := time.Now()
			if now.Before(ci.Cert.NotBefore) {
				return fmt.Sprintf("the certificate %s is not valid until %s (check this machine's clock)", describeCert(ci.Cert), ci.Cert.NotBefore.UTC().Format(time.RFC3339))
			}
			return fmt.Sprintf("the certificate %s expired on %s", describeCert(ci.Cert), ci.Cert.NotAfter.UTC().Format(time.RFC3339))
		case x509.IncompatibleUsage:
			return fmt.Sprintf("the certificate %s is not valid for a TLS server (extended key usage)", describeCert(ci.Cert))
		}
		return fmt.Sprintf("the certificate %s is invalid: %s", describeCert(ci.Cert), ci.Error())
	}
	return "the certificate could not be verified: " + err.Error()
}

// CertNames lists the names a certificate is valid for: its DNS and IP
// SANs, or its CN when it has none of those (Go ignores such a CN).
func CertNames(c *x509.Certificate) []string {
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return []string{fmt.Sprintf("no DNS or IP names (only CN=%q, which is not checked)", c.Subject.CommonName)}
	}
	return names
}

// DaysLeft is the whole days until a certificate's NotAfter (negative once
// it has expired).
func DaysLeft(c *x509.Certificate, now time.Time) int {
	return int(math.Floor(c.NotAfter.Sub(now).Hours() / 24))
}

// describeCert names a certificate for messages: CN=… or its first name.
func describeCert(c *x509.Certificate) string {
	if c == nil {
		return "(none)"
	}
	if c.Subject.CommonName != "" {
		return fmt.Sprintf("CN=%s", c.Subject.CommonName)
	}
	if n := CertNames(c); len(n) > 0 {
		return n[0]
	}
	return c.Subject.String()
}

// DescribeCert is describeCert for other packages.
func DescribeCert(c *x509.Certificate) string { return describeCert(c) }

// IsIP reports whether host is an IP literal.
func IsIP(host string) bool { return net.ParseIP(host) != nil }
