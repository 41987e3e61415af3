package certstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose key lives only in memory.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// chain holds the issuing intermediates (leaf-side first) when this CA is
	// itself an intermediate, so leaves can carry the full path.
	chain []*x509.Certificate
	root  *x509.Certificate
}

// Option adjusts a certificate template before it is signed.
type Option func(*x509.Certificate)

// NotBefore sets the start of validity.
func NotBefore(t time.Time) Option { return func(c *x509.Certificate) { c.NotBefore = t } }

// NotAfter sets the end of validity.
func NotAfter(t time.Time) Option { return func(c *x509.Certificate) { c.NotAfter = t } }

// Expired makes a certificate that ended an hour ago.
func Expired() Option {
	return func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-48 * time.Hour)
		c.NotAfter = time.Now().Add(-time.Hour)
	}
}

// ValidFor makes a certificate valid from a minute ago for d.
func ValidFor(d time.Duration) Option {
	return func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-time.Minute)
		c.NotAfter = time.Now().Add(d)
	}
}

// DNSNames adds DNS SANs.
func DNSNames(names ...string) Option {
	return func(c *x509.Certificate) { c.DNSNames = append(c.DNSNames, names...) }
}

// URIs adds URI SANs (e.g. SPIFFE IDs); it panics on an unparsable URI.
func URIs(uris ...string) Option {
	return func(c *x509.Certificate) {
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				panic("certstest: bad URI " + s + ": " + err.Error())
			}
			c.URIs = append(c.URIs, u)
		}
	}
}

// IPs adds IP SANs.
func IPs(ips ...net.IP) Option {
	return func(c *x509.Certificate) { c.IPAddresses = append(c.IPAddresses, ips...) }
}

// CommonName overrides the subject CN (empty removes it, as many SPIFFE
// SVIDs have none).
func CommonName(cn string) Option { return func(c *x509.Certificate) { c.Subject.CommonName = cn } }

// CommonNames replaces the subject with one CN attribute per name, in this
// order, each in its own RDN: "CN=alice, CN=postgres" is two names, which Go
// reads as the last (Subject.CommonName) and OpenSSL-based postgres as the
// first.
func CommonNames(cns ...string) Option {
	return func(c *x509.Certificate) {
		c.Subject.CommonName = ""
		c.Subject.ExtraNames = nil
		for _, cn := range cns {
			c.Subject.ExtraNames = append(c.Subject.ExtraNames, pkix.AttributeTypeAndValue{Type: oidCommonName, Value: cn})
		}
	}
}

// oidCommonName is id-at-commonName (RFC 5280 appendix A).
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// ExtKeyUsages replaces the extended key usages.
func ExtKeyUsages(u ...x509.ExtKeyUsage) Option {
	return func(c *x509.Certificate) { c.ExtKeyUsage = u }
}

// NewCA makes a self-signed root valid for a day around now.
func NewCA(t testing.TB, opts ...Option) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := caTemplate(t, "certstest root", opts)
	cert := sign(t, tmpl, tmpl, key.Public(), key)
	return &CA{Cert: cert, Key: key, root: cert}
}

// Intermediate makes a CA signed by ca; leaves it issues carry the
// intermediate in their chain PEM.
func (ca *CA) Intermediate(t testing.TB, opts ...Option) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := caTemplate(t, "certstest intermediate", opts)
	cert := sign(t, tmpl, ca.Cert, key.Public(), ca.Key)
	return &CA{Cert: cert, Key: key, root: ca.root, chain: append([]*x509.Certificate{cert}, ca.chain...)}
}

// caTemplate is a CA certificate valid for a day around now, named
// "<name> <random id>", with opts applied.
func caTemplate(t testing.TB, name string, opts []Option) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name + " " + randomID(t)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, o := range opts {
		o(tmpl)
	}
	return tmpl
}

// CertPEM is the root certificate in PEM, e.g. for sslrootcert or
// --tls-client-ca. For an intermediate it is the root above it, because
// that is what a verifier trusts; the intermediate travels in leaf chains.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw})
}

// CertPool is a pool holding only the root.
func (ca *CA) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root)
	return p
}

// Server issues a serverAuth leaf for hosts (IP literals become IP SANs,
// everything else DNS SANs; CN is the first host). It returns the chain PEM
// (leaf first, then any intermediates) and a PKCS#8 key PEM.
func (ca *CA) Server(t testing.TB, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	return ca.ServerWith(t, hosts)
}

// ServerWith is Server with options, e.g. Expired() or ValidFor(d).
func (ca *CA) ServerWith(t testing.TB, hosts []string, opts ...Option) (certPEM, keyPEM []byte) {
	t.Helper()
	tmpl := leafTemplate(t, x509.ExtKeyUsageServerAuth)
	if len(hosts) > 0 {
		tmpl.Subject.CommonName = hosts[0]
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.Issue(t, tmpl, opts...)
}

// Client issues a clientAuth leaf with CN=cn.
func (ca *CA) Client(t testing.TB, cn string, opts ...Option) (certPEM, keyPEM []byte) {
	t.Helper()
	tmpl := leafTemplate(t, x509.ExtKeyUsageClientAuth)
	tmpl.Subject.CommonName = cn
	return ca.Issue(t, tmpl, opts...)
}

// ClientCertificate is Client as a tls.Certificate for tls.Config.Certificates.
func (ca *CA) ClientCertificate(t testing.TB, cn string, opts ...Option) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.Client(t, cn, opts...)
	return KeyPair(t, certPEM, keyPEM)
}

// ServerCertificate is Server as a tls.Certificate.
func (ca *CA) ServerCertificate(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.Server(t, hosts...)
	return KeyPair(t, certPEM, keyPEM)
}

// Issue signs tmpl (after applying opts) with a fresh key.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate, opts ...Option) (certPEM, keyPEM []byte) {
	t.Helper()
	for _, o := range opts {
		o(tmpl)
	}
	key := newKey(t)
	cert := sign(t, tmpl, ca.Cert, key.Public(), ca.Key)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	for _, c := range ca.chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return certPEM, KeyPEM(t, key)
}

// Files names what WriteFiles wrote.
type Files struct {
	CA, Cert, Key string
}

// WriteFiles writes ca.crt, server.crt and server.key (0600) into dir for a
// server named hosts (default localhost, 127.0.0.1, ::1).
func (ca *CA) WriteFiles(t testing.TB, dir string, hosts ...string) Files {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	certPEM, keyPEM := ca.Server(t, hosts...)
	f := Files{
		CA:   WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM()),
		Cert: WriteFile(t, filepath.Join(dir, "server.crt"), certPEM),
		Key:  WriteFile(t, filepath.Join(dir, "server.key"), keyPEM),
	}
	return f
}

// WriteFile writes data to path with mode 0600 and returns path.
func WriteFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("certstest: writing %s: %v", path, err)
	}
	return path
}

// KeyPair parses PEM cert chain and key into a tls.Certificate with Leaf set.
func KeyPair(t testing.TB, certPEM, keyPEM []byte) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("certstest: building key pair: %v", err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			t.Fatalf("certstest: parsing leaf: %v", err)
		}
	}
	return c
}

// KeyPEM encodes key as a PKCS#8 "PRIVATE KEY" block.
func KeyPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("certstest: marshalling key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func leafTemplate(t testing.TB, usage x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("certstest: generating key: %v", err)
	}
	return key
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatalf("certstest: signing certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("certstest: parsing certificate: %v", err)
	}
	return cert
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatalf("certstest: generating serial: %v", err)
	}
	return n
}

func randomID(t testing.TB) string {
	return serial(t).Text(36)[:8]
}
