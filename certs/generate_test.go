package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	certs, err := parseCertificates(fielderr.Field{Name: "test"}, file, data)
	require.NoError(t, err)
	return certs[0]
}

func TestInitCA(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	f, err := InitCA(dir, []string{"DB.Example.com", "127.0.0.1", "::1", "db.example.com", "localhost"}, false)
	require.NoError(t, err)
	assert.Equal(t, []string{"db.example.com", "127.0.0.1", "::1", "localhost"}, f.Hosts)

	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	for file, mode := range map[string]os.FileMode{f.CACert: 0o644, f.CAKey: 0o600, f.ServerCert: 0o644, f.ServerKey: 0o600} {
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Equal(t, mode, st.Mode().Perm(), file)
	}
	leftovers, err := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	require.NoError(t, err)
	assert.Empty(t, leftovers, "temporary files must be cleaned up")

	ca, server := readCert(t, f.CACert), readCert(t, f.ServerCert)
	assert.True(t, ca.IsCA)
	assert.True(t, ca.MaxPathLenZero)
	assert.Equal(t, "db.example.com", server.Subject.CommonName)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, server.ExtKeyUsage)
	assert.Equal(t, elliptic.P256(), server.PublicKey.(*ecdsa.PublicKey).Curve)
	assert.Equal(t, elliptic.P256(), ca.PublicKey.(*ecdsa.PublicKey).Curve)
	assert.GreaterOrEqual(t, server.SerialNumber.BitLen(), 64, "random 128-bit serial")
	assert.NotEqual(t, ca.SerialNumber, server.SerialNumber)
	assert.WithinDuration(t, time.Now().Add(ServerValidity), server.NotAfter, time.Minute)
	assert.WithinDuration(t, time.Now().Add(CAValidity), ca.NotAfter, time.Minute)

	// The chain verifies for every host name and IP, as verify-full would.
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, host := range []string{"db.example.com", "DB.EXAMPLE.COM", "127.0.0.1", "::1", "localhost"} {
		_, err := server.Verify(x509.VerifyOptions{DNSName: host, Roots: roots})
		assert.NoError(t, err, host)
	}
	_, err = server.Verify(x509.VerifyOptions{DNSName: "other.example.com", Roots: roots})
	assert.Error(t, err)

	// And the Loader accepts the pair.
	l, err := NewLoader(f.ServerCert, f.ServerKey, nil)
	require.NoError(t, err)
	assert.Equal(t, server.SerialNumber, l.Current().Leaf.SerialNumber)
}

func TestInitCARefusesToOverwrite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		existing string // file that exists before init
	}{
		{"ca.crt", CACertName},
		{"ca.key", CAKeyName},
		{"server.crt", ServerCertName},
		{"server.key", ServerKeyName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, tc.existing)
			require.NoError(t, os.WriteFile(path, []byte("precious"), 0o600))
			_, err := InitCA(dir, []string{"localhost"}, false)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrExists))
			assert.Contains(t, flagText(err), path+": file already exists; nothing was written (pass --force to replace it)")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Len(t, entries, 1, "nothing else may be written")
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, "precious", string(data))
		})
	}
}

func TestInitCAForceReplaces(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := InitCA(dir, []string{"localhost"}, false)
	require.NoError(t, err)
	oldCA := readCert(t, first.CACert)
	second, err := InitCA(dir, []string{"db.internal"}, true)
	require.NoError(t, err)
	newCA := readCert(t, second.CACert)
	assert.NotEqual(t, oldCA.SerialNumber, newCA.SerialNumber)
	assert.Equal(t, "db.internal", readCert(t, second.ServerCert).Subject.CommonName)
	st, err := os.Stat(second.ServerKey)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

func TestInitCAHostErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		hosts   []string
		wantErr string
	}{
		{"none", nil, "--host is required"},
		{"empty", []string{""}, `--host "": empty host name`},
		{"space", []string{"db example"}, `--host "db example": not a valid DNS name or IP address (character ' ')`},
		{"url", []string{"https://db"}, `--host "https://db": not a valid DNS name or IP address`},
		{"dash", []string{"-db.example"}, `--host "-db.example": not a valid DNS name (label starts or ends with '-')`},
		{"empty label", []string{"db..example"}, "empty or over-long label"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			_, err := InitCA(dir, tc.hosts, false)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrUsage)
			assert.Contains(t, flagText(err), tc.wantErr)
			entries, _ := os.ReadDir(dir)
			assert.Empty(t, entries)
		})
	}
}

func TestIssueClient(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f, err := InitCA(dir, []string{"db.example.com"}, false)
	require.NoError(t, err)

	cf, err := IssueClient(dir, "ci-runner", 2*time.Hour, false)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "ci-runner.crt"), cf.Cert)
	assert.Equal(t, filepath.Join(dir, "ci-runner.key"), cf.Key)
	assert.Equal(t, "db.example.com", cf.ServerName)
	st, err := os.Stat(cf.Key)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	leaf := readCert(t, cf.Cert)
	assert.Equal(t, "ci-runner", leaf.Subject.CommonName)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage)
	assert.WithinDuration(t, time.Now().Add(2*time.Hour), leaf.NotAfter, time.Minute)

	// The issued certificate passes the Authorizer as role ci-runner.
	a, err := NewAuthorizer(Policy{ClientCAFile: f.CACert}, nil)
	require.NoError(t, err)
	pair, err := tls.LoadX509KeyPair(cf.Cert, cf.Key)
	require.NoError(t, err)
	assert.NoError(t, a.Authorize(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, "ci-runner"))
	assert.Len(t, pair.Certificate, 1)

	// Second issue without force refuses; with force replaces.
	_, err = IssueClient(dir, "ci-runner", 0, false)
	assert.ErrorIs(t, err, ErrExists)
	cf2, err := IssueClient(dir, "ci-runner", 0, true)
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(DefaultClientTTL), cf2.NotAfter, time.Minute)
}

func TestIssueClientErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := InitCA(dir, []string{"localhost"}, false)
	require.NoError(t, err)
	empty := t.TempDir()

	tests := []struct {
		name, dir, client string
		ttl               time.Duration
		wantUsage         bool
		wantErr           string
	}{
		{"no name", dir, "", 0, true, "--client is required"},
		{"slash", dir, "a/b", 0, true, `--client "a/b": may not contain '/'`},
		{"dotdot", dir, "..", 0, true, `--client "..": may not contain`},
		{"dot prefix", dir, ".hidden", 0, true, `--client ".hidden": may not start with '.'`},
		{"dash prefix", dir, "-rf", 0, true, `may not start with '.' or '-'`},
		{"reserved ca", dir, "ca", 0, true, `--client "ca": reserved`},
		{"reserved server", dir, "Server", 0, true, `--client "Server": reserved`},
		{"odd character", dir, "a b", 0, true, `use letters, digits`},
		{"too long", dir, string(make([]byte, 65)), 0, true, "longer than 64 bytes"},
		{"negative ttl", dir, "ok", -time.Hour, true, "--ttl -1h0m0s: must be positive"},
		{"outlives CA", dir, "ok", 20 * 365 * 24 * time.Hour, true, "would outlive the CA"},
		{"no CA", empty, "ok", 0, false, "ca.crt: reading: no such file or directory (run `pgwarden certs init"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := IssueClient(tc.dir, tc.client, tc.ttl, false)
			require.Error(t, err)
			assert.Contains(t, flagText(err), tc.wantErr)
			assert.Equal(t, tc.wantUsage, errors.Is(err, ErrUsage), "ErrUsage")
		})
	}
}

func TestParseTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"12h", 12 * time.Hour, false},
		{"90m", 90 * time.Minute, false},
		{"30d", 30 * 24 * time.Hour, false},
		{"0", 0, true},
		{"-1h", 0, true},
		{"1.5d", 0, true},
		{"soon", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseTTL(tc.in)
		if tc.wantErr {
			assert.ErrorIs(t, err, ErrUsage, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}
