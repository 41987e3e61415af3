package certs

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ClientCAFiles are the paths InitClientCA wrote.
type ClientCAFiles struct {
	CACert, CAKey, CRL string
	CANotAfter         time.Time
	CRLNextUpdate      time.Time
}

// InitClientCA creates dir (0700) if needed and writes a CA that signs
// client certificates only (DIR/ca.crt, DIR/ca.key), with an empty
// revocation list (DIR/crl.pem) so that --tls-client-crl can be set from
// the start. Its key is the one to hand to CI for `certs issue`: it cannot
// make a server certificate anyone accepts, because clients verify the
// server against the server's own CA, and because the CA's extended key
// usage is clientAuth only (see newCA). The layout is that of certs init,
// so `certs issue` and `certs revoke` work on either directory. Existing
// files are refused unless force.
func InitClientCA(dir string, force bool) (ClientCAFiles, error) {
	f := ClientCAFiles{
		CACert: filepath.Join(dir, CACertName),
		CAKey:  filepath.Join(dir, CAKeyName),
		CRL:    filepath.Join(dir, CRLName),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ClientCAFiles{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	if !force {
		if err := refuseExisting(f.CACert, f.CAKey, f.CRL); err != nil {
			return ClientCAFiles{}, err
		}
	}
	now := time.Now()
	caCert, caKey, err := newCA("pgwarden client CA", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, now)
	if err != nil {
		return ClientCAFiles{}, err
	}
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return ClientCAFiles{}, err
	}
	crl, err := signCRL(caCert, caKey, nil, nil, DefaultCRLValidity, now)
	if err != nil {
		return ClientCAFiles{}, err
	}
	err = writeFiles(force, []fileContent{
		{f.CACert, certPEM(caCert.Raw), 0o644},
		{f.CAKey, caKeyPEM, 0o600},
		{f.CRL, crl.pem, 0o644},
	})
	if err != nil {
		return ClientCAFiles{}, err
	}
	f.CANotAfter, f.CRLNextUpdate = caCert.NotAfter, crl.NextUpdate
	return f, nil
}
