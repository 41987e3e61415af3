package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// Validity of what `pgwarden certs` makes. The server certificate is short
// enough that a forgotten rotation shows up (WarnIfExpiring warns 14 days
// ahead) and the CA long enough not to need rotating with it.
const (
	CAValidity       = 10 * 365 * 24 * time.Hour
	ServerValidity   = 365 * 24 * time.Hour
	DefaultClientTTL = 30 * 24 * time.Hour
	// backdate covers clocks slightly behind ours on the verifying side.
	backdate = 5 * time.Minute
)

// File names inside the certs directory.
const (
	CACertName     = "ca.crt"
	CAKeyName      = "ca.key"
	ServerCertName = "server.crt"
	ServerKeyName  = "server.key"
)

// Files are the paths InitCA wrote.
type Files struct {
	CACert, CAKey, ServerCert, ServerKey string
	Hosts                                []string  // the server certificate's names, CN first
	ServerNotAfter, CANotAfter           time.Time // ends of validity
}

// ClientFiles are the paths IssueClient wrote and what a client needs.
type ClientFiles struct {
	Cert, Key, CACert string
	NotAfter          time.Time
	// ServerName is the first name in DIR/server.crt, for the usage hint; ""
	// if that file is absent or unreadable.
	ServerName string
	// ClientCA: DIR holds a client-only CA (InitClientCA), so clients verify
	// the server with another CA than CACert.
	ClientCA bool
	// Serial is the certificate's serial number, as revocation names it.
	Serial *big.Int
}

// InitCA creates dir (0700) if needed and writes a new private CA and a
// server certificate for hosts (DNS names and IP addresses; the first is the
// CN). Keys are ECDSA P-256 written with mode 0600. If any of the four files
// exists and force is false, nothing is written and the error names the file.
func InitCA(dir string, hosts []string, force bool) (Files, error) {
	dnsNames, ips, names, err := parseHosts(hosts)
	if err != nil {
		return Files{}, err
	}
	f := Files{
		CACert:     filepath.Join(dir, CACertName),
		CAKey:      filepath.Join(dir, CAKeyName),
		ServerCert: filepath.Join(dir, ServerCertName),
		ServerKey:  filepath.Join(dir, ServerKeyName),
		Hosts:      names,
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	if !force {
		if err := refuseExisting(f.CACert, f.CAKey, f.ServerCert, f.ServerKey); err != nil {
			return Files{}, err
		}
	}

	now := time.Now()
	caCert, caKey, err := newCA("pgwarden CA", nil, now)
	if err != nil {
		return Files{}, err
	}
	serverTmpl := serverTemplate(names, dnsNames, ips, now, now.Add(ServerValidity))
	serverCertPEM, serverKeyPEM, err := issueLeaf(serverTmpl, caCert, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("issuing server certificate: %w", err)
	}
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return Files{}, err
	}
	err = writeFiles(force, []fileContent{
		{f.CACert, certPEM(caCert.Raw), 0o644},
		{f.CAKey, caKeyPEM, 0o600},
		{f.ServerCert, serverCertPEM, 0o644},
		{f.ServerKey, serverKeyPEM, 0o600},
	})
	if err != nil {
		return Files{}, err
	}
	f.CANotAfter, f.ServerNotAfter = caCert.NotAfter, serverTmpl.NotAfter
	return f, nil
}

// newCA makes a self-signed P-256 CA valid for CAValidity from now, named
// name plus a random suffix. extKeyUsage, if not empty, limits what the CA
// may sign: RFC 5280 leaves EKU on a CA undefined, but Go's verifier and
// OpenSSL (its check_purpose for a CA in the chain) both refuse a leaf
// whose purpose the CA's EKU lacks, so a client CA with clientAuth only
// cannot vouch for a server even if someone trusts it as a server CA.
func newCA(name string, extKeyUsage []x509.ExtKeyUsage, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// A random suffix keeps two deployments' CAs distinct by subject,
		// so a client trusting both never confuses their issuers.
		Subject:               pkix.Name{Organization: []string{"pgwarden"}, CommonName: name + " " + hex.EncodeToString(serial.Bytes()[:4])},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           extKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Leaves only: nobody should hang an intermediate off this CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("signing CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return cert, key, nil
}

// serverTemplate is a serverAuth leaf for names (the first is the CN).
func serverTemplate(names, dnsNames []string, ips []net.IP, now, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		NotBefore:   now.Add(-backdate),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// caSigns reports whether ca may sign leaves for usage: a CA without
// extended key usages signs anything (the combined CA of certs init), one
// with them only what they list (the client CA of certs init-client-ca).
func caSigns(ca *x509.Certificate, usage x509.ExtKeyUsage) bool {
	if len(ca.ExtKeyUsage) == 0 {
		return true
	}
	for _, u := range ca.ExtKeyUsage {
		if u == usage || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// IssueClient issues a client certificate with CN=name from the CA in dir,
// writing DIR/NAME.crt and DIR/NAME.key (0600). ttl 0 means
// DefaultClientTTL; the certificate may not outlive the CA.
func IssueClient(dir, name string, ttl time.Duration, force bool) (ClientFiles, error) {
	if err := ValidateClientName(name); err != nil {
		return ClientFiles{}, err
	}
	switch {
	case ttl == 0:
		ttl = DefaultClientTTL
	case ttl < 0:
		return ClientFiles{}, usageErrorf("%s %s: must be positive", FieldTTL, ttl)
	}
	cf := ClientFiles{
		Cert:   filepath.Join(dir, name+".crt"),
		Key:    filepath.Join(dir, name+".key"),
		CACert: filepath.Join(dir, CACertName),
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return ClientFiles{}, err
	}
	if !caSigns(caCert, x509.ExtKeyUsageClientAuth) {
		return ClientFiles{}, errorf("%s %s: this CA may not sign client certificates (its extended key usage excludes clientAuth)", FieldDir, cf.CACert)
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(caCert.NotAfter) {
		return ClientFiles{}, usageErrorf("%s %s: the certificate would outlive the CA, which expires on %s", FieldTTL, ttl, caCert.NotAfter.UTC().Format(time.DateOnly))
	}
	if !force {
		if err := refuseExisting(cf.Cert, cf.Key); err != nil {
			return ClientFiles{}, err
		}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		NotBefore:   now.Add(-backdate),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	certPEM, keyPEM, err := issueLeaf(tmpl, caCert, caKey)
	if err != nil {
		return ClientFiles{}, fmt.Errorf("issuing client certificate: %w", err)
	}
	if err := writeFiles(force, []fileContent{{cf.Cert, certPEM, 0o644}, {cf.Key, keyPEM, 0o600}}); err != nil {
		return ClientFiles{}, err
	}
	// Recorded after the files exist, so the record never names a
	// certificate nobody received; a failure here leaves a certificate that
	// can still be revoked by serial, so say so rather than fail silently.
	if err := recordIssued(dir, issuedRecord{Serial: tmpl.SerialNumber.Text(16), Name: name, NotAfter: notAfter, Issued: now}); err != nil {
		return ClientFiles{}, fmt.Errorf("%w (the certificate was written; revoke it by serial %s if needed)", err, tmpl.SerialNumber.Text(16))
	}
	cf.NotAfter = notAfter
	cf.ServerName = serverName(dir)
	cf.ClientCA = !caSigns(caCert, x509.ExtKeyUsageServerAuth)
	cf.Serial = tmpl.SerialNumber
	return cf, nil
}

// loadCA reads DIR/ca.crt and DIR/ca.key and checks that they belong together.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certFile, keyFile := filepath.Join(dir, CACertName), filepath.Join(dir, CAKeyName)
	withHint := func(err error) error {
		return errorf("%w (run `pgwarden certs init %s %s %s NAME` or `pgwarden certs init-client-ca %s %s` first)", err, FieldDir, dir, FieldHost, FieldDir, dir)
	}
	data, err := readFile(FieldDir, certFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, withHint(err)
		}
		return nil, nil, err
	}
	cas, err := parseCertificates(FieldDir, certFile, data)
	if err != nil {
		return nil, nil, err
	}
	keyData, err := readFile(FieldDir, keyFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, withHint(err)
		}
		return nil, nil, err
	}
	key, err := parsePrivateKey(FieldDir, keyFile, keyData)
	if err != nil {
		return nil, nil, err
	}
	ca := cas[0]
	if !ca.IsCA {
		return nil, nil, errorf("%s %s: not a CA certificate", FieldDir, certFile)
	}
	if !publicKeysEqual(ca.PublicKey, key.Public()) {
		return nil, nil, errorf("%s %s: does not match %s", FieldDir, keyFile, certFile)
	}
	if time.Now().After(ca.NotAfter) {
		return nil, nil, errorf("%s %s: the CA expired on %s; run certs init %s to make a new one", FieldDir, certFile, ca.NotAfter.UTC().Format(time.DateOnly), FieldForce)
	}
	return ca, key, nil
}

// serverName is the first name in DIR/server.crt, or "".
func serverName(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, ServerCertName))
	if err != nil {
		return ""
	}
	certs, err := parseCertificates(fielderr.Field{}, "", data)
	if err != nil {
		return ""
	}
	c := certs[0]
	switch {
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	case len(c.IPAddresses) > 0:
		return c.IPAddresses[0].String()
	}
	return c.Subject.CommonName
}

// issueLeaf gives tmpl a fresh P-256 key and random serial and signs it.
func issueLeaf(tmpl, ca *x509.Certificate, caKey crypto.Signer) (certOut, keyOut []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signing: %w", err)
	}
	keyOut, err = keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return certPEM(der), keyOut, nil
}

// randomSerial is 128 random bits (RFC 5280 allows up to 20 octets; CAB
// forum asks for at least 64 bits of entropy).
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	// Serial numbers must be positive; zero is astronomically unlikely but
	// cheap to rule out.
	return n.Add(n, big.NewInt(1)), nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
