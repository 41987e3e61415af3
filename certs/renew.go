package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"time"
)

// Renewed is what RenewServer wrote.
type Renewed struct {
	ServerCert, ServerKey string
	Hosts                 []string // the new certificate's names, CN first
	Serial                string   // hex, as the gateway logs it
	NotAfter              time.Time
	// CappedByCA: the certificate ends with the CA, sooner than
	// ServerValidity from now.
	CappedByCA bool
}

// RenewServer issues a new server certificate and key from the CA in dir
// and replaces DIR/server.crt and DIR/server.key, leaving the CA alone, so
// clients' sslrootcert and issued client certificates stay valid. The names
// are the current certificate's unless hosts is given. Each file is written
// to a temporary file and renamed into place: a gateway watching the
// directory never reads a half-written file, and at worst sees the new key
// with the old certificate for an instant, which its reload refuses as a
// mismatch before it picks up the pair on the next event.
func RenewServer(dir string, hosts []string) (Renewed, error) {
	r := Renewed{
		ServerCert: filepath.Join(dir, ServerCertName),
		ServerKey:  filepath.Join(dir, ServerKeyName),
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return Renewed{}, err
	}
	if !caSigns(caCert, x509.ExtKeyUsageServerAuth) {
		return Renewed{}, usageErrorf("%s %s: a client CA (certs init-client-ca) cannot sign server certificates; renew in the server's certs directory", FieldDir, filepath.Join(dir, CACertName))
	}
	if len(hosts) == 0 {
		if hosts, err = currentHosts(r.ServerCert); err != nil {
			return Renewed{}, err
		}
	}
	dnsNames, ips, names, err := parseHosts(hosts)
	if err != nil {
		return Renewed{}, err
	}
	now := time.Now()
	notAfter := now.Add(ServerValidity)
	if notAfter.After(caCert.NotAfter) {
		notAfter, r.CappedByCA = caCert.NotAfter, true
	}
	tmpl := serverTemplate(names, dnsNames, ips, now, notAfter)
	certOut, keyOut, err := issueLeaf(tmpl, caCert, caKey)
	if err != nil {
		return Renewed{}, fmt.Errorf("issuing server certificate: %w", err)
	}
	// The key first: until the certificate follows, a reload sees a
	// mismatch and keeps the old pair (never a new certificate with a key
	// that is not there yet).
	if err := writeFiles(true, []fileContent{{r.ServerKey, keyOut, 0o600}, {r.ServerCert, certOut, 0o644}}); err != nil {
		return Renewed{}, err
	}
	r.Hosts, r.Serial, r.NotAfter = names, tmpl.SerialNumber.Text(16), notAfter
	return r, nil
}

// currentHosts reads the names of the server certificate being renewed:
// its DNS and IP SANs, with the CN first if it is one of them (certs init
// made the first host the CN). A CN that is no SAN is left out: clients
// verify against the SANs only (RFC 6125; libpq ignores the CN when SANs
// exist).
func currentHosts(certFile string) ([]string, error) {
	data, err := readFile(FieldDir, certFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, usageError{errorf("%w: pass %s NAME for the names of the new certificate", err, FieldHost)}
		}
		return nil, err
	}
	chain, err := parseCertificates(FieldDir, certFile, data)
	if err != nil {
		return nil, err
	}
	c := chain[0]
	var sans []string
	sans = append(sans, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		sans = append(sans, ip.String())
	}
	if len(sans) == 0 {
		return nil, usageErrorf("%s %s: the certificate has no DNS or IP names; pass %s NAME", FieldDir, certFile, FieldHost)
	}
	if slices.Contains(sans, c.Subject.CommonName) {
		// parseHosts drops the later duplicate.
		sans = append([]string{c.Subject.CommonName}, sans...)
	}
	return sans, nil
}
