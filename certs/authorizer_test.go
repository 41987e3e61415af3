package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// peerState is the ConnectionState a server sees for a client presenting
// chainPEM (leaf first).
func peerState(t *testing.T, chainPEM []byte) *tls.ConnectionState {
	t.Helper()
	certs, err := parseCertificates(fielderr.Field{Name: "test"}, "chain", chainPEM)
	require.NoError(t, err)
	return &tls.ConnectionState{PeerCertificates: certs}
}

func clientState(t *testing.T, ca *certstest.CA, cn string, opts ...certstest.Option) *tls.ConnectionState {
	t.Helper()
	certPEM, _ := ca.Client(t, cn, opts...)
	return peerState(t, certPEM)
}

func TestAuthorize(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	inter := ca.Intermediate(t)
	stranger := certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	mapFile := certstest.WriteFile(t, filepath.Join(dir, "users.map"), []byte(`# CN            role
ci-runner        ci_deploy
ci-runner        ci_readonly   # a CN may map to several roles
"Jane Doe"       jane
spiffe://example.org/ns/ci/sa/runner  ci_spiffe
`))

	interLeafPEM, _ := inter.Client(t, "alice")
	interLeafOnly := peerState(t, interLeafPEM).PeerCertificates[:1]

	open := Policy{ClientCAFile: caFile}
	narrowed := Policy{ClientCAFile: caFile, AllowCN: []string{"alice", "ci-runner"}, AllowSAN: []string{"spiffe://example.org/ns/ci/sa/runner", "Worker.Example.Org"}, MapFile: mapFile}
	mapped := Policy{ClientCAFile: caFile, MapUser: []string{"bob=reporting", "bob=analytics"}, MapFile: mapFile}

	tests := []struct {
		name     string
		policy   Policy
		cs       *tls.ConnectionState
		role     string
		wantKind error  // nil: allowed
		wantText string // exact public text
	}{
		{name: "no connection state", policy: open, cs: nil, role: "alice", wantKind: ErrNoClientCert, wantText: "client certificate required"},
		{name: "no certificate", policy: open, cs: &tls.ConnectionState{}, role: "alice", wantKind: ErrNoClientCert, wantText: "client certificate required"},
		{name: "other CA", policy: open, cs: clientState(t, stranger, "alice"), role: "alice", wantKind: ErrUntrustedClientCert, wantText: "client certificate not trusted: unknown authority"},
		{name: "expired", policy: open, cs: clientState(t, ca, "alice", certstest.Expired()), role: "alice", wantKind: ErrUntrustedClientCert, wantText: "client certificate not trusted: expired or not yet valid"},
		{name: "server-only usage", policy: open, cs: clientState(t, ca, "alice", certstest.ExtKeyUsages(x509.ExtKeyUsageServerAuth)), role: "alice", wantKind: ErrUntrustedClientCert, wantText: "client certificate not trusted: not valid for client authentication"},
		{name: "via intermediate in chain", policy: open, cs: peerState(t, interLeafPEM), role: "alice"},
		{name: "intermediate missing from chain", policy: open, cs: &tls.ConnectionState{PeerCertificates: interLeafOnly}, role: "alice", wantKind: ErrUntrustedClientCert, wantText: "client certificate not trusted: unknown authority"},
		{name: "default rule: role equals CN", policy: open, cs: clientState(t, ca, "alice"), role: "alice"},
		{name: "default rule: other role", policy: open, cs: clientState(t, ca, "alice"), role: "postgres", wantKind: ErrRoleNotAllowed, wantText: `certificate "alice" may not log in as role "postgres"`},
		{name: "default rule is case-sensitive", policy: open, cs: clientState(t, ca, "alice"), role: "Alice", wantKind: ErrRoleNotAllowed, wantText: `certificate "alice" may not log in as role "Alice"`},
		{name: "role postgres would truncate", policy: open, cs: clientState(t, ca, strings.Repeat("a", 64)), role: strings.Repeat("a", 64), wantKind: ErrRoleNotAllowed},
		{name: "allowed CN", policy: narrowed, cs: clientState(t, ca, "alice"), role: "alice"},
		{name: "disallowed CN", policy: narrowed, cs: clientState(t, ca, "mallory"), role: "mallory", wantKind: ErrIdentityNotAllowed, wantText: `certificate identity "mallory" is not allowed`},
		{name: "allowed URI SAN without CN", policy: narrowed, cs: clientState(t, ca, "", certstest.URIs("spiffe://example.org/ns/ci/sa/runner")), role: "ci_spiffe"},
		{name: "URI SAN identity, unmapped role", policy: narrowed, cs: clientState(t, ca, "", certstest.URIs("spiffe://example.org/ns/ci/sa/runner")), role: "postgres", wantKind: ErrRoleNotAllowed, wantText: `certificate "spiffe://example.org/ns/ci/sa/runner" may not log in as role "postgres"`},
		{name: "other URI SAN", policy: narrowed, cs: clientState(t, ca, "", certstest.URIs("spiffe://example.org/ns/prod/sa/admin")), role: "admin", wantKind: ErrIdentityNotAllowed, wantText: `certificate identity "spiffe://example.org/ns/prod/sa/admin" is not allowed`},
		{name: "allowed DNS SAN, case-insensitive", policy: narrowed, cs: clientState(t, ca, "worker", certstest.DNSNames("worker.example.org")), role: "worker"},
		{name: "map hit", policy: narrowed, cs: clientState(t, ca, "ci-runner"), role: "ci_deploy"},
		{name: "map hit, second role", policy: narrowed, cs: clientState(t, ca, "ci-runner"), role: "ci_readonly"},
		{name: "map miss", policy: narrowed, cs: clientState(t, ca, "ci-runner"), role: "postgres", wantKind: ErrRoleNotAllowed, wantText: `certificate "ci-runner" may not log in as role "postgres"`},
		{name: "mapped identity loses the default rule", policy: narrowed, cs: clientState(t, ca, "ci-runner"), role: "ci-runner", wantKind: ErrRoleNotAllowed},
		{name: "flag map hit", policy: mapped, cs: clientState(t, ca, "bob"), role: "analytics"},
		{name: "flag and file maps merge", policy: mapped, cs: clientState(t, ca, "Jane Doe"), role: "jane"},
		{name: "unmapped CN keeps the default rule", policy: mapped, cs: clientState(t, ca, "carol"), role: "carol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := NewAuthorizer(tc.policy, nil)
			require.NoError(t, err)
			err = a.Authorize(tc.cs, tc.role)
			if tc.wantKind == nil {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.True(t, errors.Is(err, tc.wantKind), "error %v is not %v", err, tc.wantKind)
			var ae *AuthError
			require.True(t, errors.As(err, &ae))
			if tc.wantText != "" {
				assert.Equal(t, tc.wantText, err.Error())
			}
		})
	}
}

func TestAuthErrorKeepsCauseOffTheWire(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	caFile := certstest.WriteFile(t, filepath.Join(t.TempDir(), "ca.crt"), ca.CertPEM())
	a, err := NewAuthorizer(Policy{ClientCAFile: caFile}, nil)
	require.NoError(t, err)
	cs := clientState(t, certstest.NewCA(t), "mallory")
	err = a.Authorize(cs, "mallory")
	require.Error(t, err)
	public := "client certificate not trusted: unknown authority"
	assert.Equal(t, public, err.Error())
	assert.Equal(t, public, fmt.Sprintf("%v", err))
	verbose := fmt.Sprintf("%+v", err)
	assert.True(t, strings.HasPrefix(verbose, public+": x509: "), verbose)
	var ae *AuthError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "untrusted_client_cert", ae.Reason())
	var unknown x509.UnknownAuthorityError
	assert.ErrorAs(t, err, &unknown, "the x509 cause stays reachable for errors.As")
	assert.Equal(t, "mallory", PeerIdentity(cs))
	assert.Equal(t, "", PeerIdentity(&tls.ConnectionState{}))
}

func TestAuthorizeAfterRealHandshake(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	caFile := certstest.WriteFile(t, filepath.Join(t.TempDir(), "ca.crt"), ca.CertPEM())
	p := Policy{ClientCAFile: caFile}
	cfg, serverCA := testServerConfig(t, p)
	a, err := NewAuthorizer(p, nil)
	require.NoError(t, err)
	res := handshake(t, cfg, &tls.Config{
		RootCAs: serverCA.CertPool(), ServerName: "localhost",
		Certificates: []tls.Certificate{ca.ClientCertificate(t, "alice")},
	})
	require.NoError(t, res.clientErr)
	require.NoError(t, res.serverErr)
	assert.NoError(t, a.Authorize(&res.server, "alice"))
	assert.ErrorIs(t, a.Authorize(&res.server, "postgres"), ErrRoleNotAllowed)
}

func TestNilAuthorizerAllows(t *testing.T) {
	t.Parallel()
	a, err := NewAuthorizer(Policy{}, nil)
	require.NoError(t, err)
	require.Nil(t, a)
	assert.NoError(t, a.Authorize(nil, "anyone"))
	assert.NoError(t, a.Reload())
}

func TestNewAuthorizerErrors(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	_, keyPEM := ca.Client(t, "x")
	keyFile := certstest.WriteFile(t, filepath.Join(dir, "x.key"), keyPEM)
	badMap := certstest.WriteFile(t, filepath.Join(dir, "bad.map"), []byte("# ok\nalice alice\nbob\nmymap carol carol\n/^(.*)$ \\1\ndave *\nerin +admins\n\"unterminated role\n"))

	tests := []struct {
		name    string
		policy  Policy
		wantErr []string
	}{
		{name: "rules without CA", policy: Policy{AllowCN: []string{"a"}, MapFile: "x"}, wantErr: []string{
			"--tls-allow-cn needs --tls-client-ca", "--tls-map-file needs --tls-client-ca"}},
		{name: "missing CA file", policy: Policy{ClientCAFile: filepath.Join(dir, "nope.crt")}, wantErr: []string{
			"--tls-client-ca " + filepath.Join(dir, "nope.crt") + ": reading: no such file or directory"}},
		{name: "key as CA file", policy: Policy{ClientCAFile: keyFile}, wantErr: []string{
			"--tls-client-ca " + keyFile + ": holds a private key, not a certificate"}},
		{name: "bad map flags", policy: Policy{ClientCAFile: caFile, MapUser: []string{"alice", "=role", "bob=", "carol=*", "spiffe://=x"}}, wantErr: []string{
			`--tls-map-user "alice": want CN=ROLE`,
			`--tls-map-user "=role": empty certificate identity`,
			`--tls-map-user "bob=": empty role`,
			`--tls-map-user "carol=*": wildcards are not supported`,
			`--tls-map-user "spiffe://=x": URI needs a scheme and a host`}},
		{name: "bad allow-san", policy: Policy{ClientCAFile: caFile, AllowSAN: []string{"", "user@example.org", "spiffe:///nohost"}}, wantErr: []string{
			"--tls-allow-san: empty value",
			`--tls-allow-san "user@example.org": not a DNS name or a URI`,
			`--tls-allow-san "spiffe:///nohost": URI needs a scheme and a host`}},
		{name: "bad map file", policy: Policy{ClientCAFile: caFile, MapFile: badMap}, wantErr: []string{
			"--tls-map-file " + badMap + ":3: want IDENTITY ROLE",
			"--tls-map-file " + badMap + ":4: want IDENTITY ROLE (pg_ident's map-name column is not used)",
			"--tls-map-file " + badMap + ":5: regular expressions are not supported",
			"--tls-map-file " + badMap + ":6: wildcards are not supported",
			"--tls-map-file " + badMap + ":7: group membership (+role) is not supported",
			"--tls-map-file " + badMap + ":8: unterminated quote"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := NewAuthorizer(tc.policy, nil)
			require.Error(t, err)
			assert.Nil(t, a)
			for _, want := range tc.wantErr {
				assert.Contains(t, flagText(err), want)
			}
			assert.NotContains(t, flagText(err), ":2:", "line 2 is valid")
		})
	}
}

func TestAuthorizerReload(t *testing.T) {
	t.Parallel()
	oldCA, newCA := certstest.NewCA(t), certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), oldCA.CertPEM())
	mapFile := certstest.WriteFile(t, filepath.Join(dir, "users.map"), []byte("alice reporting\n"))
	a, err := NewAuthorizer(Policy{ClientCAFile: caFile, MapFile: mapFile}, nil)
	require.NoError(t, err)
	oldAlice, newAlice := clientState(t, oldCA, "alice"), clientState(t, newCA, "alice")
	require.NoError(t, a.Authorize(oldAlice, "reporting"))
	require.ErrorIs(t, a.Authorize(newAlice, "reporting"), ErrUntrustedClientCert)

	// Rotate the CA and the map (SIGHUP reloads both).
	certstest.WriteFile(t, caFile, newCA.CertPEM())
	certstest.WriteFile(t, mapFile, []byte("alice analytics\n"))
	require.NoError(t, a.Reload())
	assert.ErrorIs(t, a.Authorize(oldAlice, "analytics"), ErrUntrustedClientCert)
	assert.NoError(t, a.Authorize(newAlice, "analytics"))
	assert.ErrorIs(t, a.Authorize(newAlice, "reporting"), ErrRoleNotAllowed)

	// A broken CA file keeps the previous pool.
	certstest.WriteFile(t, caFile, []byte("garbage"))
	err = a.Reload()
	require.Error(t, err)
	assert.Contains(t, flagText(err), "--tls-client-ca "+caFile)
	assert.NoError(t, a.Authorize(newAlice, "analytics"))
	// And so does a broken map file.
	certstest.WriteFile(t, caFile, newCA.CertPEM())
	require.NoError(t, os.Remove(mapFile))
	require.Error(t, a.Reload())
	assert.NoError(t, a.Authorize(newAlice, "analytics"))
}
