package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// readDirCRL is the CRL in dir, checked against its CA.
func readDirCRL(t *testing.T, dir string) *x509.RevocationList {
	t.Helper()
	crl, err := readCRL(dir, readCert(t, filepath.Join(dir, CACertName)))
	require.NoError(t, err)
	require.NotNil(t, crl)
	return crl
}

func revokedSerials(crl *x509.RevocationList) []string {
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.Text(16))
	}
	return out
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}

func TestRenewServer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f, err := InitCA(dir, []string{"db.example.com", "10.0.0.5", "db"}, false)
	require.NoError(t, err)
	caBefore, caKeyBefore := mustRead(t, f.CACert), mustRead(t, f.CAKey)
	old := readCert(t, f.ServerCert)
	oldKey := mustRead(t, f.ServerKey)

	r, err := RenewServer(dir, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"db.example.com", "db", "10.0.0.5"}, r.Hosts, "the names are kept, CN first")
	assert.Equal(t, caBefore, mustRead(t, f.CACert), "ca.crt unchanged")
	assert.Equal(t, caKeyBefore, mustRead(t, f.CAKey), "ca.key unchanged")
	renewed := readCert(t, f.ServerCert)
	assert.NotEqual(t, old.SerialNumber, renewed.SerialNumber)
	assert.Equal(t, r.Serial, renewed.SerialNumber.Text(16))
	assert.Equal(t, old.Subject.CommonName, renewed.Subject.CommonName)
	assert.Equal(t, old.DNSNames, renewed.DNSNames)
	assert.Equal(t, len(old.IPAddresses), len(renewed.IPAddresses))
	assert.NotEqual(t, oldKey, mustRead(t, f.ServerKey), "a new key")
	assert.WithinDuration(t, time.Now().Add(ServerValidity), renewed.NotAfter, time.Minute)
	assert.False(t, r.CappedByCA)
	for file, mode := range map[string]os.FileMode{f.ServerCert: 0o644, f.ServerKey: 0o600} {
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Equal(t, mode, st.Mode().Perm(), file)
	}
	leftovers, err := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	require.NoError(t, err)
	assert.Empty(t, leftovers)
	// The new pair loads, and verifies against the unchanged CA.
	_, err = NewLoader(f.ServerCert, f.ServerKey, nil)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, f.CACert))
	_, err = renewed.Verify(x509.VerifyOptions{Roots: roots, DNSName: "db"})
	require.NoError(t, err)

	// --host replaces the names.
	r, err = RenewServer(dir, []string{"pg.example.org"})
	require.NoError(t, err)
	assert.Equal(t, []string{"pg.example.org"}, r.Hosts)
	assert.Equal(t, []string{"pg.example.org"}, readCert(t, f.ServerCert).DNSNames)
	assert.Equal(t, caBefore, mustRead(t, f.CACert))
}

func TestRenewServerErrors(t *testing.T) {
	t.Parallel()
	withCA := t.TempDir()
	_, err := InitCA(withCA, []string{"localhost"}, false)
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(withCA, ServerCertName)))
	clientCA := t.TempDir()
	_, err = InitClientCA(clientCA, false)
	require.NoError(t, err)

	tests := []struct {
		name, dir string
		hosts     []string
		wantUsage bool
		wantErr   string
	}{
		{"no CA", t.TempDir(), nil, false, "ca.crt: reading: no such file or directory"},
		{"no server certificate and no --host", withCA, nil, true, "server.crt: reading: no such file or directory: pass --host NAME"},
		{"bad host", withCA, []string{"a b"}, true, `--host "a b"`},
		{"client CA", clientCA, []string{"localhost"}, true, "a client CA (certs init-client-ca) cannot sign server certificates"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RenewServer(tc.dir, tc.hosts)
			require.Error(t, err)
			assert.Contains(t, flagText(err), tc.wantErr)
			assert.Equal(t, tc.wantUsage, errorsIsUsage(err), "ErrUsage")
		})
	}

	// With --host, a missing server certificate is simply issued.
	r, err := RenewServer(withCA, []string{"localhost"})
	require.NoError(t, err)
	assert.Equal(t, []string{"localhost"}, r.Hosts)
}

// TestRenewServerCappedByCA: a certificate never outlives its CA.
func TestRenewServerCappedByCA(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t) // valid for a day
	dir := t.TempDir()
	certstest.WriteFile(t, filepath.Join(dir, CACertName), ca.CertPEM())
	certstest.WriteFile(t, filepath.Join(dir, CAKeyName), certstest.KeyPEM(t, ca.Key))
	r, err := RenewServer(dir, []string{"localhost"})
	require.NoError(t, err)
	assert.True(t, r.CappedByCA)
	assert.True(t, r.NotAfter.Equal(ca.Cert.NotAfter))
	assert.True(t, readCert(t, r.ServerCert).NotAfter.Equal(ca.Cert.NotAfter))
}

func TestInitClientCA(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ci")
	f, err := InitClientCA(dir, false)
	require.NoError(t, err)
	for file, mode := range map[string]os.FileMode{f.CACert: 0o644, f.CAKey: 0o600, f.CRL: 0o644} {
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Equal(t, mode, st.Mode().Perm(), file)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 3, "no server certificate")
	ca := readCert(t, f.CACert)
	assert.True(t, ca.IsCA)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, ca.ExtKeyUsage)
	assert.True(t, strings.HasPrefix(ca.Subject.CommonName, "pgwarden client CA "))
	crl := readDirCRL(t, dir)
	assert.Empty(t, crl.RevokedCertificateEntries)
	assert.Equal(t, int64(1), crl.Number.Int64())
	assert.WithinDuration(t, time.Now().Add(DefaultCRLValidity), crl.NextUpdate, time.Minute)

	// certs issue works from it and says it is a client CA.
	cf, err := IssueClient(dir, "runner", time.Hour, false)
	require.NoError(t, err)
	assert.True(t, cf.ClientCA)
	assert.Empty(t, cf.ServerName)
	// The gateway accepts its certificates with this CA and CRL.
	a, err := NewAuthorizer(Policy{ClientCAFile: f.CACert, ClientCRLFile: f.CRL}, nil)
	require.NoError(t, err)
	leaf := readCert(t, cf.Cert)
	require.NoError(t, a.Authorize(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, "runner"))

	// Its key cannot make a server certificate that verifies, even for a
	// client that (wrongly) trusts it as a server CA: the CA's EKU is
	// clientAuth only.
	key := readKey(t, f.CAKey)
	forged := &certstest.CA{Cert: ca, Key: key}
	serverPEM, _ := forged.Server(t, "db.example.com")
	server, err := parseCertificates(fielderr.Field{}, "", serverPEM)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err = server[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: "db.example.com"})
	require.Error(t, err)
	assert.Contains(t, flagText(err), "incompatible key usage")

	// A second init refuses; --force replaces.
	_, err = InitClientCA(dir, false)
	assert.ErrorIs(t, err, ErrExists)
	_, err = InitClientCA(dir, true)
	require.NoError(t, err)
}

func TestIssueClientRecordsSerials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := InitClientCA(dir, false)
	require.NoError(t, err)
	a, err := IssueClient(dir, "runner", time.Hour, false)
	require.NoError(t, err)
	b, err := IssueClient(dir, "runner", 2*time.Hour, true)
	require.NoError(t, err)
	c, err := IssueClient(dir, "other", time.Hour, false)
	require.NoError(t, err)
	records, err := readIssued(dir)
	require.NoError(t, err)
	require.Len(t, records, 3)
	for i, cf := range []ClientFiles{a, b, c} {
		assert.Equal(t, cf.Serial.Text(16), records[i].Serial)
		assert.True(t, cf.NotAfter.Equal(records[i].NotAfter))
	}
	assert.Equal(t, []string{"runner", "runner", "other"}, []string{records[0].Name, records[1].Name, records[2].Name})

	// A damaged record is reported with its line.
	f, err := os.OpenFile(filepath.Join(dir, IssuedName), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("{\"serial\":\"zz\"}\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = readIssued(dir)
	require.Error(t, err)
	assert.Contains(t, flagText(err), IssuedName+":4:")
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := InitCA(dir, []string{"localhost"}, false) // the combined CA works too
	require.NoError(t, err)
	r1, err := IssueClient(dir, "runner", time.Hour, false)
	require.NoError(t, err)
	r2, err := IssueClient(dir, "runner", time.Hour, true)
	require.NoError(t, err)
	other, err := IssueClient(dir, "other", time.Hour, false)
	require.NoError(t, err)
	// An expired certificate of runner in the record.
	require.NoError(t, recordIssued(dir, issuedRecord{Serial: "abcdef", Name: "runner", NotAfter: time.Now().Add(-time.Hour), Issued: time.Now().Add(-2 * time.Hour)}))

	// By name: every certificate of runner that has not expired.
	res, err := Revoke(dir, "runner", "keyCompromise", 0)
	require.NoError(t, err)
	require.Len(t, res.Certs, 2)
	assert.Equal(t, 1, res.Expired)
	assert.Equal(t, filepath.Join(dir, CRLName), res.CRL.Path)
	assert.Equal(t, int64(1), res.CRL.Number.Int64())
	crl := readDirCRL(t, dir)
	assert.ElementsMatch(t, []string{r1.Serial.Text(16), r2.Serial.Text(16)}, revokedSerials(crl))
	for _, e := range crl.RevokedCertificateEntries {
		assert.Equal(t, 1, e.ReasonCode)
	}
	assert.WithinDuration(t, time.Now().Add(DefaultCRLValidity), crl.NextUpdate, time.Minute)
	st, err := os.Stat(res.CRL.Path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm())

	// Again: nothing new, the CRL is not rewritten.
	before := mustRead(t, res.CRL.Path)
	res, err = Revoke(dir, "runner", "", 0)
	require.NoError(t, err)
	assert.True(t, res.Certs[0].Already && res.Certs[1].Already)
	assert.Empty(t, res.CRL.Path)
	assert.Equal(t, before, mustRead(t, filepath.Join(dir, CRLName)))

	// By serial, as openssl prints it (upper case, colons), with a
	// validity: the number goes up, the entries stay.
	hex := strings.ToUpper(other.Serial.Text(16))
	var colons []string
	for i := len(hex); i > 0; i -= 2 {
		colons = append([]string{hex[max(0, i-2):i]}, colons...)
	}
	res, err = Revoke(dir, strings.Join(colons, ":"), "", 7*24*time.Hour)
	require.NoError(t, err)
	require.Len(t, res.Certs, 1)
	assert.Equal(t, "other", res.Certs[0].Name, "the record names the serial")
	assert.Equal(t, int64(2), res.CRL.Number.Int64())
	crl = readDirCRL(t, dir)
	assert.Len(t, crl.RevokedCertificateEntries, 3)
	assert.WithinDuration(t, time.Now().Add(7*24*time.Hour), crl.NextUpdate, time.Minute)

	// A serial nobody recorded (other tooling, same CA) is revoked anyway.
	res, err = Revoke(dir, "0x1234", "", 0)
	require.NoError(t, err)
	assert.Empty(t, res.Certs[0].Name)
	assert.Zero(t, big.NewInt(0x1234).Cmp(res.Certs[0].Serial))

	// RefreshCRL: same entries, next number, new NextUpdate.
	info, err := RefreshCRL(dir, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, int64(4), info.Number.Int64())
	assert.Equal(t, 4, info.Entries)
	assert.WithinDuration(t, time.Now().Add(time.Hour), readDirCRL(t, dir).NextUpdate, time.Minute)
}

func TestRevokeErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := InitClientCA(dir, false)
	require.NoError(t, err)
	_, err = IssueClient(dir, "runner", time.Hour, false)
	require.NoError(t, err)
	// A directory whose CRL another CA signed (the CA was replaced).
	replaced := t.TempDir()
	_, err = InitClientCA(replaced, false)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(replaced, CRLName), mustRead(t, filepath.Join(dir, CRLName)), 0o644))

	tests := []struct {
		name, dir, target, reason string
		validity                  time.Duration
		wantUsage                 bool
		wantErr                   string
	}{
		{"no target", dir, "", "", 0, true, "NAME or SERIAL is required"},
		{"unknown name", dir, "nobody", "", 0, true, `"nobody" is neither a client name in`},
		{"over-long serial", dir, strings.Repeat("a", 41), "", 0, true, "is neither a client name"},
		{"bad reason", dir, "runner", "lost", 0, true, `--reason "lost": use one of unspecified, keyCompromise`},
		{"negative validity", dir, "runner", "", -time.Hour, true, "--next-update -1h0m0s: must be positive"},
		{"no CA", t.TempDir(), "runner", "", 0, false, "ca.crt: reading: no such file or directory"},
		{"CRL of another CA", replaced, "1234", "", 0, false, "not signed by " + filepath.Join(replaced, CACertName) + " (was the CA replaced?)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Revoke(tc.dir, tc.target, tc.reason, tc.validity)
			require.Error(t, err)
			assert.Contains(t, flagText(err), tc.wantErr)
			assert.Equal(t, tc.wantUsage, errorsIsUsage(err), "ErrUsage")
		})
	}
}

func TestParseSerial(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"1a": 0x1a, "0x1A": 0x1a, "01:A2": 0x1a2, "FF": 255} {
		got, ok := parseSerial(in)
		require.True(t, ok, in)
		assert.Equal(t, want, got.Int64(), in)
	}
	for _, in := range []string{"", "0", "-5", "xyz", "0x", strings.Repeat("f", 41)} {
		_, ok := parseSerial(in)
		assert.False(t, ok, in)
	}
}

func errorsIsUsage(err error) bool { return errors.Is(err, ErrUsage) }

// readKey parses a PEM private key file.
func readKey(t *testing.T, file string) crypto.Signer {
	t.Helper()
	key, err := parsePrivateKey(fielderr.Field{Name: "test"}, file, mustRead(t, file))
	require.NoError(t, err)
	return key
}
