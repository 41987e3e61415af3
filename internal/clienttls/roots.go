package clienttls

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"os"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// FieldRootCert is the CA file given to LoadRootCAs (fielderr.Render).
var FieldRootCert = fielderr.Field{Pkg: "clienttls", Name: "root CA file"}

// LoadRootCAs reads the CA certificates (PEM) that verify a server, or
// returns nil (the system roots) for no file.
func LoadRootCAs(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fielderr.Errorf("%s %s: %w", FieldRootCert, file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fielderr.Errorf("%s %s: no PEM CERTIFICATE block found", FieldRootCert, file)
	}
	return pool, nil
}
