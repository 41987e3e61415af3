package check

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/gateway"
)

// expiryWarning is how close to its end a certificate gets a WARN, as the
// gateway's own expiry warning.
const expiryWarning = certs.DefaultExpiryWarning

// loadCerts remembers every route's certificate, to recognise this
// configuration's gateway when it answers on an address.
func (c *checker) loadCerts() {
	for _, rc := range c.routes {
		if pair, err := tls.LoadX509KeyPair(rc.TLSCert, rc.TLSKey); err == nil {
			c.certs = append(c.certs, pair.Certificate[0])
		}
	}
}

// checkCertificate: the pair loads and matches, the chain verifies, the
// names cover the listen hosts that are names, it is valid long enough,
// and its key is of a kind and size clients accept.
func (c *checker) checkCertificate(rc gateway.RouteConfig) {
	if rc.TLSCert == "" || rc.TLSKey == "" {
		return // a config FAIL already
	}
	certFlag, keyFlag := c.name(certs.FieldCert), c.name(certs.FieldKey)
	pair, err := tls.LoadX509KeyPair(rc.TLSCert, rc.TLSKey)
	if err != nil {
		c.result("certificate", Fail, &rc, fmt.Sprintf("give %s and %s a matching certificate chain and key (PEM)", certFlag, keyFlag),
			"%s and %s: %v", rc.TLSCert, rc.TLSKey, err)
		return
	}
	chain := make([]*x509.Certificate, 0, len(pair.Certificate))
	for _, der := range pair.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			c.result("certificate", Fail, &rc, "", "%s: parsing: %v", rc.TLSCert, err)
			return
		}
		chain = append(chain, cert)
	}
	leaf := chain[0]
	c.ok("certificate", &rc, "%s: %s, issued by %s; the key in %s matches", rc.TLSCert, leaf.Subject, leaf.Issuer, rc.TLSKey)
	c.checkChain(rc, chain)
	c.checkNames(rc, leaf)
	c.checkExpiry(rc, leaf)
	c.checkKey(rc, leaf)
}

// checkChain verifies the chain as a client with verify-full would, against
// the CA clients are given.
func (c *checker) checkChain(rc gateway.RouteConfig, chain []*x509.Certificate) {
	inter := x509.NewCertPool()
	for _, cert := range chain[1:] {
		inter.AddCert(cert)
	}
	// Verified at a time the leaf is valid: its expiry has a line of its
	// own, and this one is about who signed it.
	at := c.env.Now()
	if leaf := chain[0]; at.Before(leaf.NotBefore) || at.After(leaf.NotAfter) {
		at = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	}
	opts := x509.VerifyOptions{Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	caFile, given := c.opts.RootCAs, c.opts.RootCAs != ""
	if !given {
		// What `pgwarden certs init` writes beside the server certificate.
		if beside := filepath.Join(filepath.Dir(rc.TLSCert), "ca.crt"); fileExists(beside) {
			caFile = beside
		}
	}
	against := "the system roots"
	if caFile != "" {
		pool, err := readPool(caFile)
		if err != nil {
			c.result("cert-chain", Fail, &rc, "", "%v", err)
			return
		}
		opts.Roots, against = pool, caFile
	}
	if _, err := chain[0].Verify(opts); err != nil {
		st, fix := Fail, "give clients (sslrootcert=) the CA that signed it, or fix the chain in "+rc.TLSCert+" (the certificate first, then its intermediates)"
		if caFile == "" {
			// Nothing says which CA clients use: a private CA is the
			// normal case, so this is for the operator to confirm.
			st, fix = Warn, "clients need sslrootcert= the CA that signed it (pgwarden check --sslrootcert FILE verifies against it)"
		}
		c.result("cert-chain", st, &rc, fix, "does not verify against %s: %v", against, err)
		return
	}
	c.ok("cert-chain", &rc, "verifies against %s", against)
}

// checkNames: a client connecting to a listen host by name, with
// verify-full, needs the name in the certificate.
func (c *checker) checkNames(rc gateway.RouteConfig, leaf *x509.Certificate) {
	var names, missing []string
	for _, spec := range rc.Listen {
		host := listenHost(spec)
		if host == "" || strings.Contains(host, "{{") || strings.HasPrefix(spec, gateway.InheritedPrefix) {
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			continue
		}
		names = append(names, host)
		if leaf.VerifyHostname(host) != nil {
			missing = append(missing, host)
		}
	}
	switch {
	case len(missing) > 0:
		c.result("cert-names", Fail, &rc, "make a certificate for those names (pgwarden certs renew --dir DIR --host NAME)",
			"the certificate does not cover %s (it names %s): clients connecting with sslmode=verify-full refuse it",
			strings.Join(missing, ", "), certNames(leaf))
	case len(names) > 0:
		c.ok("cert-names", &rc, "covers the listen names %s", strings.Join(names, ", "))
	}
}

func (c *checker) checkExpiry(rc gateway.RouteConfig, leaf *x509.Certificate) {
	now := c.env.Now()
	left := leaf.NotAfter.Sub(now)
	days := int(math.Floor(left.Hours() / 24))
	renew := "renew it (pgwarden certs renew --dir DIR); the gateway reloads the files when they change"
	switch {
	case now.Before(leaf.NotBefore):
		c.result("cert-expiry", Fail, &rc, "check this host's clock, or issue a certificate valid now", "not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case left <= 0:
		c.result("cert-expiry", Fail, &rc, renew, "expired %d days ago (%s): clients refuse it", int(-left.Hours()/24), leaf.NotAfter.UTC().Format(time.RFC3339))
	case left < expiryWarning:
		c.result("cert-expiry", Warn, &rc, renew, "expires in %d days (%s)", days, leaf.NotAfter.UTC().Format(time.RFC3339))
	default:
		c.ok("cert-expiry", &rc, "%d days left (until %s)", days, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// checkKey: libpq's OpenSSL refuses RSA keys under 2048 bits at its
// default security level; ECDSA on P-256 and up and Ed25519 are fine.
func (c *checker) checkKey(rc gateway.RouteConfig, leaf *x509.Certificate) {
	fix := "make an ECDSA P-256 pair (pgwarden certs renew --dir DIR) or RSA of 2048 bits or more"
	switch k := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		name := k.Curve.Params().Name
		if k.Curve.Params().BitSize < 256 {
			c.result("cert-key", Fail, &rc, fix, "ECDSA %s is below 256 bits", name)
			return
		}
		c.ok("cert-key", &rc, "ECDSA %s", name)
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		if bits < 2048 {
			c.result("cert-key", Fail, &rc, fix, "RSA %d bits: clients with OpenSSL's default security level refuse keys under 2048 bits", bits)
			return
		}
		c.ok("cert-key", &rc, "RSA %d bits", bits)
	case ed25519.PublicKey:
		c.ok("cert-key", &rc, "Ed25519")
	default:
		c.result("cert-key", Warn, &rc, fix, "unusual key type %T", k)
	}
}

func readPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the CA file %s: %w", file, err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("the CA file %s: %w", file, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("the CA file " + file + " holds no PEM certificate")
	}
	return pool, nil
}

func certNames(leaf *x509.Certificate) string {
	var names []string
	names = append(names, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no name"
	}
	return strings.Join(names, ", ")
}

// listenHost is the host part of a listen setting ("" for ":PORT").
func listenHost(spec string) string {
	if i := strings.LastIndex(spec, ":"); i >= 0 {
		return strings.Trim(spec[:i], "[]")
	}
	return spec
}

func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}
