package certs

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/internal/certstest"
)

func TestNewLoaderErrors(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	goodCert, goodKey := writePair(t, ca, dir, "good")
	_, otherKey := writePair(t, ca, dir, "other")
	expiredCert, expiredKey := writePair(t, ca, dir, "expired", certstest.NotBefore(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)), certstest.NotAfter(time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)))
	futureCert, futureKey := writePair(t, ca, dir, "future", certstest.NotBefore(time.Now().Add(time.Hour)), certstest.NotAfter(time.Now().Add(48*time.Hour)))
	garbage := certstest.WriteFile(t, filepath.Join(dir, "garbage.pem"), []byte("hello\n"))
	badDER := certstest.WriteFile(t, filepath.Join(dir, "bad-der.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))
	encrypted := certstest.WriteFile(t, filepath.Join(dir, "enc.key"), pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}))
	goodCertPEM, err := os.ReadFile(goodCert)
	require.NoError(t, err)
	caFirst := certstest.WriteFile(t, filepath.Join(dir, "ca-first.crt"), append(ca.CertPEM(), goodCertPEM...))
	// The key matching the second certificate: issue a leaf and put it after the CA.
	missing := filepath.Join(dir, "missing.crt")

	tests := []struct {
		name, cert, key string
		wantErr         string
	}{
		{"missing cert", missing, goodKey, "--tls-cert " + missing + ": reading: no such file or directory"},
		{"missing key", goodCert, filepath.Join(dir, "missing.key"), "--tls-key " + filepath.Join(dir, "missing.key") + ": reading: no such file or directory"},
		{"mismatched key", goodCert, otherKey, "--tls-cert " + goodCert + ": certificate and key do not match"},
		{"expired", expiredCert, expiredKey, "--tls-cert " + expiredCert + ": certificate expired on 2026-01-02"},
		{"not yet valid", futureCert, futureKey, "--tls-cert " + futureCert + ": certificate is not valid until"},
		{"garbage cert", garbage, goodKey, "--tls-cert " + garbage + ": no PEM CERTIFICATE block found"},
		{"garbage key", goodCert, garbage, "--tls-key " + garbage + ": no PEM private key block found"},
		{"bad DER", badDER, goodKey, "--tls-cert " + badDER + ": parsing certificate #1"},
		{"swapped", goodKey, goodCert, "--tls-cert " + goodKey + ": holds a private key, not a certificate"},
		{"encrypted key", goodCert, encrypted, "--tls-key " + encrypted + ": the key is encrypted"},
		{"CA first in chain", caFirst, goodKey, "--tls-cert " + caFirst + ": the key matches certificate #2, not the first"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l, err := NewLoader(tc.cert, tc.key, nil)
			require.Error(t, err)
			assert.Nil(t, l)
			if !strings.Contains(flagText(err), tc.wantErr) {
				t.Errorf("error %q\nwant substring %q", flagText(err), tc.wantErr)
			}
		})
	}
}

func TestNewLoaderPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads mode-0000 files")
	}
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := writePair(t, certstest.NewCA(t), dir, "server")
	require.NoError(t, os.Chmod(keyFile, 0))
	_, err := NewLoader(certFile, keyFile, nil)
	require.Error(t, err)
	assert.Equal(t, "--tls-key "+keyFile+": reading: permission denied", flagText(err))
}

func TestNewLoaderSuccess(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t).Intermediate(t)
	certFile, keyFile := writePair(t, ca, t.TempDir(), "server")
	l, err := NewLoader(certFile, keyFile, nil)
	require.NoError(t, err)
	cur := l.Current()
	require.NotNil(t, cur.Leaf)
	assert.Equal(t, "localhost", cur.Leaf.Subject.CommonName)
	assert.Len(t, cur.Certificate, 2, "leaf plus intermediate")
	got, err := l.GetCertificate(&tls.ClientHelloInfo{})
	require.NoError(t, err)
	assert.Same(t, cur, got)
}

func TestReloadKeepsOldPairOnBrokenReplacement(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := writePair(t, ca, dir, "server")
	log, logs := observedLogger()
	l, err := NewLoader(certFile, keyFile, log)
	require.NoError(t, err)
	orig := l.Current()

	otherCA := certstest.NewCA(t)
	_, otherKeyPEM := otherCA.Server(t, "localhost")
	expiredCertPEM, expiredKeyPEM := ca.ServerWith(t, []string{"localhost"}, certstest.Expired())

	tests := []struct {
		name     string
		cert     []byte // nil: leave as is
		key      []byte // nil: leave as is
		remove   string // "cert" or "key": delete that file
		wantFile string
		wantErr  string
	}{
		{name: "mismatched key", key: otherKeyPEM, wantFile: certFile, wantErr: "certificate and key do not match"},
		{name: "expired", cert: expiredCertPEM, key: expiredKeyPEM, wantFile: certFile, wantErr: "certificate expired on"},
		{name: "garbage cert", cert: []byte("-----BEGIN nonsense"), wantFile: certFile, wantErr: "no PEM CERTIFICATE block"},
		{name: "key removed", remove: "key", wantFile: keyFile, wantErr: "reading: no such file or directory"},
	}
	origCert, err := os.ReadFile(certFile)
	require.NoError(t, err)
	origKey, err := os.ReadFile(keyFile)
	require.NoError(t, err)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Not parallel: each case rewrites the same files.
			certstest.WriteFile(t, certFile, origCert)
			certstest.WriteFile(t, keyFile, origKey)
			if tc.cert != nil {
				certstest.WriteFile(t, certFile, tc.cert)
			}
			if tc.key != nil {
				certstest.WriteFile(t, keyFile, tc.key)
			}
			switch tc.remove {
			case "key":
				require.NoError(t, os.Remove(keyFile))
			case "cert":
				require.NoError(t, os.Remove(certFile))
			}
			logs.TakeAll()
			err := l.Reload()
			require.Error(t, err)
			assert.Contains(t, flagText(err), tc.wantFile)
			assert.Contains(t, flagText(err), tc.wantErr)
			assert.Same(t, orig, l.Current(), "old pair must keep serving")
			errs := logs.FilterLevelExact(zapcore.ErrorLevel).All()
			require.Len(t, errs, 1)
			assert.Contains(t, errs[0].ContextMap()["error"], tc.wantFile)
		})
	}

	// A good replacement is swapped in.
	newCert, newKey := ca.Server(t, "localhost", "new.example")
	certstest.WriteFile(t, certFile, newCert)
	certstest.WriteFile(t, keyFile, newKey)
	require.NoError(t, l.Reload())
	assert.NotSame(t, orig, l.Current())
	assert.Contains(t, l.Current().Leaf.DNSNames, "new.example")

	// Reloading unchanged files keeps the same pointer.
	cur := l.Current()
	require.NoError(t, l.Reload())
	assert.Same(t, cur, l.Current())
}

func TestReloadAffectsOnlyNewHandshakes(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := writePair(t, ca, dir, "server")
	l, err := NewLoader(certFile, keyFile, nil)
	require.NoError(t, err)
	cfg, err := ServerConfig(l, Policy{})
	require.NoError(t, err)
	client := &tls.Config{RootCAs: ca.CertPool(), ServerName: "localhost"}

	first := handshake(t, cfg, client)
	require.NoError(t, first.clientErr)
	firstSerial := first.client.PeerCertificates[0].SerialNumber

	newCert, newKey := ca.Server(t, "localhost")
	certstest.WriteFile(t, certFile, newCert)
	certstest.WriteFile(t, keyFile, newKey)
	require.NoError(t, l.Reload())

	second := handshake(t, cfg, client)
	require.NoError(t, second.clientErr)
	assert.NotEqual(t, firstSerial, second.client.PeerCertificates[0].SerialNumber)
	assert.Equal(t, l.Current().Leaf.SerialNumber, second.client.PeerCertificates[0].SerialNumber)
}

func TestWatchPicksUpRenameReplacement(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := writePair(t, ca, dir, "server")
	l, err := NewLoader(certFile, keyFile, nil)
	require.NoError(t, err)
	orig := l.Current()
	startWatch(t, l)

	// Editors and cert-manager write a temporary file and rename it over.
	newCert, newKey := ca.Server(t, "localhost", "renamed.example")
	certstest.WriteFile(t, filepath.Join(dir, ".server.key.tmp"), newKey)
	certstest.WriteFile(t, filepath.Join(dir, ".server.crt.tmp"), newCert)
	require.NoError(t, os.Rename(filepath.Join(dir, ".server.key.tmp"), keyFile))
	require.NoError(t, os.Rename(filepath.Join(dir, ".server.crt.tmp"), certFile))

	require.Eventually(t, func() bool { return l.Current() != orig }, 5*time.Second, 10*time.Millisecond)
	assert.Contains(t, l.Current().Leaf.DNSNames, "renamed.example")
}

func TestWatchPicksUpKubernetesSymlinkSwap(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	// Kubernetes secret volume layout: tls.crt -> ..data/tls.crt,
	// ..data -> ..v1; an update writes ..v2 and renames a new ..data over.
	v1 := filepath.Join(dir, "..v1")
	require.NoError(t, os.Mkdir(v1, 0o700))
	writePairAs(t, ca, v1, "initial.example")
	require.NoError(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink("..data/tls.crt", filepath.Join(dir, "tls.crt")))
	require.NoError(t, os.Symlink("..data/tls.key", filepath.Join(dir, "tls.key")))

	l, err := NewLoader(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), nil)
	require.NoError(t, err)
	require.Contains(t, l.Current().Leaf.DNSNames, "initial.example")
	startWatch(t, l)

	v2 := filepath.Join(dir, "..v2")
	require.NoError(t, os.Mkdir(v2, 0o700))
	writePairAs(t, ca, v2, "swapped.example")
	require.NoError(t, os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))

	require.Eventually(t, func() bool {
		return len(l.Current().Leaf.DNSNames) > 0 && l.Current().Leaf.DNSNames[0] == "swapped.example"
	}, 5*time.Second, 10*time.Millisecond)
}

// startWatch runs l.Watch with a short quiet period until the test ends,
// returning once the watches are in place.
func startWatch(t *testing.T, l *Loader) {
	t.Helper()
	l.debounce = 20 * time.Millisecond
	ready := make(chan struct{})
	l.watching = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	go func() { watchDone <- l.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-watchDone)
	})
	select {
	case <-ready:
	case err := <-watchDone:
		t.Fatalf("Watch returned early: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not start")
	}
}

func writePairAs(t *testing.T, ca *certstest.CA, dir, host string) {
	t.Helper()
	certPEM, keyPEM := ca.Server(t, host)
	certstest.WriteFile(t, filepath.Join(dir, "tls.crt"), certPEM)
	certstest.WriteFile(t, filepath.Join(dir, "tls.key"), keyPEM)
}

func TestWarnIfExpiring(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := writePair(t, ca, dir, "server", certstest.NotAfter(time.Now().Add(10*24*time.Hour+time.Hour)))

	tests := []struct {
		name      string
		now       time.Time
		within    time.Duration
		wantLevel zapcore.Level
		wantDays  int64
		wantNone  bool
	}{
		{name: "far", now: time.Now(), within: 7 * 24 * time.Hour, wantNone: true},
		{name: "within 14 days", now: time.Now(), within: DefaultExpiryWarning, wantLevel: zapcore.WarnLevel, wantDays: 10},
		{name: "already expired", now: time.Now().Add(11 * 24 * time.Hour), within: DefaultExpiryWarning, wantLevel: zapcore.ErrorLevel, wantDays: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			log, logs := observedLogger()
			l, err := NewLoader(certFile, keyFile, log)
			require.NoError(t, err)
			l.now = func() time.Time { return tc.now }
			logs.TakeAll()
			l.WarnIfExpiring(tc.within)
			entries := logs.TakeAll()
			if tc.wantNone {
				assert.Empty(t, entries)
				return
			}
			require.Len(t, entries, 1)
			assert.Equal(t, tc.wantLevel, entries[0].Level)
			assert.Equal(t, tc.wantDays, entries[0].ContextMap()["days_left"])
			assert.Equal(t, certFile, entries[0].ContextMap()["cert_file"])
		})
	}
}

func TestRunExpiryChecksStopsWithContext(t *testing.T) {
	t.Parallel()
	certFile, keyFile := writePair(t, certstest.NewCA(t), t.TempDir(), "server")
	log, logs := observedLogger()
	l, err := NewLoader(certFile, keyFile, log)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.RunExpiryChecks(ctx, 0); close(done) }()
	// The certstest leaf lives a day, so the immediate check warns.
	require.Eventually(t, func() bool { return logs.FilterLevelExact(zapcore.WarnLevel).Len() == 1 }, 5*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunExpiryChecks did not return after cancel")
	}
}

func TestWatchFollowsSymlinkTargetRewrittenInPlace(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	linkDir, targetDir := t.TempDir(), t.TempDir()
	writePairAs(t, ca, targetDir, "initial.example")
	certFile, keyFile := filepath.Join(linkDir, "tls.crt"), filepath.Join(linkDir, "tls.key")
	require.NoError(t, os.Symlink(filepath.Join(targetDir, "tls.crt"), certFile))
	require.NoError(t, os.Symlink(filepath.Join(targetDir, "tls.key"), keyFile))
	l, err := NewLoader(certFile, keyFile, nil)
	require.NoError(t, err)
	startWatch(t, l)

	writePairAs(t, ca, targetDir, "rewritten.example") // os.WriteFile truncates in place
	require.Eventually(t, func() bool {
		return l.Current().Leaf.DNSNames[0] == "rewritten.example"
	}, 5*time.Second, 10*time.Millisecond)
}

func TestWatchKeepsOldPairOnBrokenReplacementThenRecovers(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	writePairAs(t, ca, dir, "initial.example")
	log, logs := observedLogger()
	l, err := NewLoader(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), log)
	require.NoError(t, err)
	orig := l.Current()
	startWatch(t, l)

	// Unrelated files in the directory do not trigger reloads.
	certstest.WriteFile(t, filepath.Join(dir, "notes.txt"), []byte("hello"))
	// A key that belongs to another certificate is refused...
	_, strayKey := ca.Server(t, "other.example")
	certstest.WriteFile(t, filepath.Join(dir, "tls.key"), strayKey)
	require.Eventually(t, func() bool { return logs.FilterLevelExact(zapcore.ErrorLevel).Len() > 0 }, 5*time.Second, 10*time.Millisecond)
	assert.Same(t, orig, l.Current())
	assert.Contains(t, logs.FilterLevelExact(zapcore.ErrorLevel).All()[0].ContextMap()["error"], "certificate and key do not match")
	for _, e := range logs.FilterMessage("certificate file changed").All() {
		assert.NotEqual(t, filepath.Join(dir, "notes.txt"), e.ContextMap()["name"])
	}
	// ...and a matching pair written afterwards is picked up.
	writePairAs(t, ca, dir, "fixed.example")
	require.Eventually(t, func() bool {
		return l.Current().Leaf.DNSNames[0] == "fixed.example"
	}, 5*time.Second, 10*time.Millisecond)
}
