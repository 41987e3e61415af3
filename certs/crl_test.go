package certs

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/internal/certstest"
)

// crlPEM is a CRL from ca, number n, valid until next, listing revoked.
func crlPEM(t *testing.T, ca *certstest.CA, n int64, next time.Time, revoked ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(n), ThisUpdate: next.Add(-48 * time.Hour), NextUpdate: next}
	for _, s := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now(), ReasonCode: 1})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// leafState is a client certificate of ca for cn, and its serial.
func leafState(t *testing.T, ca *certstest.CA, cn string) (*tls.ConnectionState, *big.Int) {
	t.Helper()
	cs := clientState(t, ca, cn)
	return cs, cs.PeerCertificates[0].SerialNumber
}

func TestAuthorizeWithCRL(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	inter := ca.Intermediate(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	alice, aliceSerial := leafState(t, ca, "alice")
	bob, _ := leafState(t, ca, "bob")
	interPEM, _ := inter.Client(t, "carol")
	carol := peerState(t, interPEM)

	tomorrow := time.Now().Add(24 * time.Hour)
	current := certstest.WriteFile(t, filepath.Join(dir, "current.crl"), crlPEM(t, ca, 2, tomorrow, aliceSerial))
	expired := certstest.WriteFile(t, filepath.Join(dir, "expired.crl"), crlPEM(t, ca, 3, time.Now().Add(-time.Minute), aliceSerial))

	tests := []struct {
		name     string
		crl      string
		cs       *tls.ConnectionState
		role     string
		wantKind error
		wantText string
	}{
		{name: "revoked", crl: current, cs: alice, role: "alice", wantKind: ErrRevokedClientCert, wantText: "client certificate revoked"},
		{name: "not revoked", crl: current, cs: bob, role: "bob"},
		{name: "revoked certificate refused whatever the role", crl: current, cs: alice, role: "postgres", wantKind: ErrRevokedClientCert},
		{name: "expired CRL refuses everyone", crl: expired, cs: bob, role: "bob", wantKind: ErrClientCertStatusUnknown, wantText: "client certificate status unknown: certificate revocation list expired"},
		{name: "issued by an intermediate the CRL cannot cover", crl: current, cs: carol, role: "carol", wantKind: ErrClientCertStatusUnknown, wantText: "client certificate status unknown: no certificate revocation list for its issuer"},
		{name: "intermediate without a CRL file is fine", crl: "", cs: carol, role: "carol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := NewAuthorizer(Policy{ClientCAFile: caFile, ClientCRLFile: tc.crl}, nil)
			require.NoError(t, err)
			err = a.Authorize(tc.cs, tc.role)
			if tc.wantKind == nil {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantKind)
			var ae *AuthError
			require.ErrorAs(t, err, &ae)
			if tc.wantText != "" {
				assert.Equal(t, tc.wantText, err.Error())
			}
			assert.NotEqual(t, "other", ae.Reason())
		})
	}
}

func TestCRLLoadErrors(t *testing.T) {
	t.Parallel()
	ca, other := certstest.NewCA(t), certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	bundle := certstest.WriteFile(t, filepath.Join(dir, "bundle.crt"), append(ca.CertPEM(), other.CertPEM()...))
	next := time.Now().Add(time.Hour)
	good := certstest.WriteFile(t, filepath.Join(dir, "good.crl"), crlPEM(t, ca, 1, next))
	foreign := certstest.WriteFile(t, filepath.Join(dir, "foreign.crl"), crlPEM(t, other, 1, next))
	garbage := certstest.WriteFile(t, filepath.Join(dir, "garbage.crl"), []byte("not a CRL\n"))
	corrupt := certstest.WriteFile(t, filepath.Join(dir, "corrupt.crl"), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte("\x30\x03abc")}))
	missing := filepath.Join(dir, "missing.crl")

	tests := []struct {
		name    string
		policy  Policy
		wantErr string
	}{
		{"CRL without CA", Policy{ClientCRLFile: good}, "--tls-client-crl needs --tls-client-ca"},
		{"missing", Policy{ClientCAFile: caFile, ClientCRLFile: missing}, "--tls-client-crl " + missing + ": reading: no such file or directory"},
		{"garbage", Policy{ClientCAFile: caFile, ClientCRLFile: garbage}, "--tls-client-crl " + garbage + ": no PEM X509 CRL block found"},
		{"corrupt", Policy{ClientCAFile: caFile, ClientCRLFile: corrupt}, "--tls-client-crl " + corrupt + ": parsing CRL #1"},
		{"CA and CRL swapped", Policy{ClientCAFile: caFile, ClientCRLFile: caFile}, "holds a certificate, not a revocation list (are --tls-client-ca and --tls-client-crl swapped?)"},
		{"another CA's CRL", Policy{ClientCAFile: caFile, ClientCRLFile: foreign}, "--tls-client-crl " + foreign + ": CRL #1 (issuer"},
		{"a CA of the bundle without a CRL", Policy{ClientCAFile: bundle, ClientCRLFile: good}, "every client CA needs one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := NewAuthorizer(tc.policy, nil)
			require.Error(t, err)
			assert.Nil(t, a)
			assert.Contains(t, flagText(err), tc.wantErr)
			assert.NotContains(t, flagText(err), "\n", "one line")
		})
	}

	// A bundle is fine when each CA has its CRL, in one file.
	both := certstest.WriteFile(t, filepath.Join(dir, "both.crl"), append(crlPEM(t, ca, 1, next), crlPEM(t, other, 1, next)...))
	_, err := NewAuthorizer(Policy{ClientCAFile: bundle, ClientCRLFile: both}, nil)
	require.NoError(t, err)
}

func TestCRLReloadKeepsOldOnError(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	alice, aliceSerial := leafState(t, ca, "alice")
	bob, bobSerial := leafState(t, ca, "bob")
	next := time.Now().Add(time.Hour)
	crlFile := certstest.WriteFile(t, filepath.Join(dir, "crl.pem"), crlPEM(t, ca, 1, next, aliceSerial))
	a, err := NewAuthorizer(Policy{ClientCAFile: caFile, ClientCRLFile: crlFile}, nil)
	require.NoError(t, err)
	require.ErrorIs(t, a.Authorize(alice, "alice"), ErrRevokedClientCert)
	require.NoError(t, a.Authorize(bob, "bob"))

	// A corrupt replacement is refused; the old list stays in force.
	certstest.WriteFile(t, crlFile, []byte("-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n"))
	err = a.Reload()
	require.Error(t, err)
	assert.Contains(t, flagText(err), "--tls-client-crl "+crlFile)
	assert.ErrorIs(t, a.Authorize(alice, "alice"), ErrRevokedClientCert)
	assert.NoError(t, a.Authorize(bob, "bob"))
	// So is a file that vanished.
	require.NoError(t, os.Remove(crlFile))
	require.Error(t, a.Reload())
	assert.ErrorIs(t, a.Authorize(alice, "alice"), ErrRevokedClientCert)

	// A good replacement takes over.
	certstest.WriteFile(t, crlFile, crlPEM(t, ca, 2, next, aliceSerial, bobSerial))
	require.NoError(t, a.Reload())
	assert.ErrorIs(t, a.Authorize(bob, "bob"), ErrRevokedClientCert)
}

func TestCRLExpiryLogged(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	for _, tc := range []struct {
		name  string
		next  time.Time
		level zapcore.Level
		msg   string
	}{
		{"expired", time.Now().Add(-time.Hour), zapcore.ErrorLevel, "certificate revocation list has expired"},
		{"soon", time.Now().Add(3 * 24 * time.Hour), zapcore.WarnLevel, "certificate revocation list expires soon"},
	} {
		crlFile := certstest.WriteFile(t, filepath.Join(dir, tc.name+".crl"), crlPEM(t, ca, 1, tc.next))
		logger, logs := observedLogger()
		_, err := NewAuthorizer(Policy{ClientCAFile: caFile, ClientCRLFile: crlFile}, logger)
		require.NoError(t, err, "an expired CRL is loaded (and refuses certificates), not a start failure")
		entries := logs.FilterLevelExact(tc.level).All()
		require.Len(t, entries, 1, tc.name)
		assert.True(t, strings.HasPrefix(entries[0].Message, tc.msg), entries[0].Message)
	}
}

// TestAuthorizerWatchReloadsCRL: replacing the CRL file by rename, as
// certs revoke does, takes effect without SIGHUP.
func TestAuthorizerWatchReloadsCRL(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	alice, aliceSerial := leafState(t, ca, "alice")
	next := time.Now().Add(time.Hour)
	crlFile := certstest.WriteFile(t, filepath.Join(dir, "crl.pem"), crlPEM(t, ca, 1, next))
	a, err := NewAuthorizer(Policy{ClientCAFile: caFile, ClientCRLFile: crlFile}, zap.NewNop())
	require.NoError(t, err)
	require.NoError(t, a.Authorize(alice, "alice"))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Watch(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	// The watch may not be in place yet: rewrite until it is seen.
	revoking := crlPEM(t, ca, 2, next, aliceSerial)
	require.Eventually(t, func() bool {
		if err := writeFiles(true, []fileContent{{crlFile, revoking, 0o644}}); err != nil {
			return false
		}
		return errors.Is(a.Authorize(alice, "alice"), ErrRevokedClientCert)
	}, 20*time.Second, 300*time.Millisecond)
}

func TestWatchWithoutCRLReturns(t *testing.T) {
	t.Parallel()
	var nilAuth *Authorizer
	assert.NoError(t, nilAuth.Watch(context.Background()))
	ca := certstest.NewCA(t)
	caFile := certstest.WriteFile(t, filepath.Join(t.TempDir(), "ca.crt"), ca.CertPEM())
	a, err := NewAuthorizer(Policy{ClientCAFile: caFile}, nil)
	require.NoError(t, err)
	assert.NoError(t, a.Watch(context.Background()), "returns at once: nothing to watch")
}

// TestRevokedAndOnReload: Revoked is true only for a certificate the list
// in force revokes (not for an expired list or an untrusted chain), and a
// reload that brings a revocation runs the hook, which sees it.
func TestRevokedAndOnReload(t *testing.T) {
	t.Parallel()
	ca, other := certstest.NewCA(t), certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	alice, aliceSerial := leafState(t, ca, "alice")
	bob, _ := leafState(t, ca, "bob")
	stranger, _ := leafState(t, other, "alice")
	tomorrow := time.Now().Add(24 * time.Hour)
	crlFile := certstest.WriteFile(t, filepath.Join(dir, "crl.pem"), crlPEM(t, ca, 1, tomorrow))

	a, err := NewAuthorizer(Policy{ClientCAFile: caFile, ClientCRLFile: crlFile}, nil)
	require.NoError(t, err)
	require.NoError(t, a.Revoked(alice.PeerCertificates), "nothing revoked yet")

	var seen []error
	a.SetOnReload(func() { seen = append(seen, a.Revoked(alice.PeerCertificates)) })
	certstest.WriteFile(t, crlFile, crlPEM(t, ca, 2, tomorrow, aliceSerial))
	require.NoError(t, a.Reload())
	require.Len(t, seen, 1, "the hook ran once")
	require.ErrorIs(t, seen[0], ErrRevokedClientCert)
	require.NoError(t, a.Revoked(bob.PeerCertificates))
	require.NoError(t, a.Revoked(stranger.PeerCertificates), "another CA's certificate is untrusted, not revoked")

	// Staged and committed (SIGHUP): the hook runs at the commit.
	certstest.WriteFile(t, crlFile, crlPEM(t, ca, 3, time.Now().Add(-time.Minute), aliceSerial))
	commit, err := a.Stage()
	require.NoError(t, err)
	require.Len(t, seen, 1, "staging puts nothing in force")
	commit()
	require.Len(t, seen, 2)
	require.NoError(t, seen[1], "an expired list vouches for nothing but revokes nothing either")

	var none *Authorizer
	require.NoError(t, none.Revoked(alice.PeerCertificates))
	none.SetOnReload(func() {})
}
