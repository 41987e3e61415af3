package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// notBeforeSkew tolerates an issuer whose clock runs slightly ahead of ours:
// cert-manager and certbot stamp NotBefore=now, and rejecting such a pair on
// reload would keep the old certificate until the next file change.
const notBeforeSkew = 5 * time.Minute

// readFile reads a file for field, turning *PathError into
// "FIELD FILE: reading: permission denied" (the path is already in front).
func readFile(field fielderr.Field, file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, errorf("%s %s: reading: %w", field, file, err)
	}
	return data, nil
}

// pemBlocks returns the PEM blocks in data, in order.
func pemBlocks(data []byte) []*pem.Block {
	var blocks []*pem.Block
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return blocks
		}
		blocks = append(blocks, block)
	}
}

// parseCertificates returns every CERTIFICATE block in data, in order.
func parseCertificates(field fielderr.Field, file string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	sawKey := false
	for _, block := range pemBlocks(data) {
		switch block.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, errorf("%s %s: parsing certificate #%d: %w", field, file, len(certs)+1, err)
			}
			certs = append(certs, c)
		case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
			sawKey = true
		}
	}
	if len(certs) == 0 {
		if sawKey {
			return nil, errorf("%s %s: holds a private key, not a certificate (are %s and %s swapped?)", field, file, FieldCert, FieldKey)
		}
		return nil, errorf("%s %s: no PEM CERTIFICATE block found", field, file)
	}
	return certs, nil
}

// parsePrivateKey accepts PKCS#8, SEC1 (EC) and PKCS#1 (RSA) PEM keys.
func parsePrivateKey(field fielderr.Field, file string, data []byte) (crypto.Signer, error) {
	sawCert := false
	for _, block := range pemBlocks(data) {
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			if _, encrypted := block.Headers["Proc-Type"]; encrypted {
				return nil, errorf("%s %s: the key is encrypted; pgwarden needs it unencrypted (openssl pkey -in KEY -out KEY.plain), protected by file mode 0600", field, file)
			}
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errorf("%s %s: the key is encrypted; pgwarden needs it unencrypted (openssl pkey -in KEY -out KEY.plain), protected by file mode 0600", field, file)
		case "CERTIFICATE":
			sawCert = true
			continue
		default:
			continue
		}
		if err != nil {
			return nil, errorf("%s %s: parsing %s: %w", field, file, block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, errorf("%s %s: unsupported key type %T", field, file, key)
		}
		return signer, nil
	}
	if sawCert {
		return nil, errorf("%s %s: holds a certificate, not a private key (are %s and %s swapped?)", field, file, FieldCert, FieldKey)
	}
	return nil, errorf("%s %s: no PEM private key block found", field, file)
}

// keyPair is one validated server certificate, plus the raw file bytes so a
// reload can tell whether anything changed.
type keyPair struct {
	cert            *tls.Certificate
	certPEM, keyPEM []byte
}

// loadKeyPair reads, parses and validates a server certificate and key:
// the key must match the first certificate, and the certificate must be
// within its validity period at now.
func loadKeyPair(certFile, keyFile string, now time.Time) (*keyPair, error) {
	certPEM, err := readFile(FieldCert, certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(FieldKey, keyFile)
	if err != nil {
		return nil, err
	}
	chain, err := parseCertificates(FieldCert, certFile, certPEM)
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKey(FieldKey, keyFile, keyPEM)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		// A common mistake is a chain file with the CA first; say so rather
		// than the bare "do not match".
		for i, c := range chain[1:] {
			if publicKeysEqual(c.PublicKey, key.Public()) {
				return nil, errorf("%s %s: the key matches certificate #%d, not the first; put the server certificate first, then its intermediates", FieldCert, certFile, i+2)
			}
		}
		return nil, errorf("%s %s: certificate and key do not match (%s %s)", FieldCert, certFile, FieldKey, keyFile)
	}
	if now.After(leaf.NotAfter) {
		return nil, errorf("%s %s: certificate expired on %s", FieldCert, certFile, leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	if leaf.NotBefore.After(now.Add(notBeforeSkew)) {
		return nil, errorf("%s %s: certificate is not valid until %s (check the clock)", FieldCert, certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return &keyPair{
		cert:    &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf},
		certPEM: certPEM,
		keyPEM:  keyPEM,
	}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}
