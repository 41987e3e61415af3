package certs

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
)

// A subject with two CNs reads as the last CN in Go and as the first in
// postgres (OpenSSL): whichever order, the certificate is refused, for
// every role, before the role rule or a map can pick one reading.
func TestAuthorizeRefusesSeveralCommonNames(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	caFile := certstest.WriteFile(t, filepath.Join(dir, "ca.crt"), ca.CertPEM())
	// Both CNs mapped and allowed: nothing but the CN count can refuse it.
	a, err := NewAuthorizer(Policy{
		ClientCAFile: caFile,
		AllowCN:      []string{"alice", "postgres"},
		MapUser:      []string{"alice=alice", "postgres=postgres"},
	}, nil)
	require.NoError(t, err)

	// One RDN holding both CNs (a multi-valued RDN) is two names as well.
	oneRDN := func(c *x509.Certificate) {
		raw, err := asn1.Marshal(pkix.RDNSequence{{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "alice"},
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "postgres"},
		}})
		require.NoError(t, err)
		c.RawSubject = raw
	}
	cases := map[string]certstest.Option{
		"alice then postgres":    certstest.CommonNames("alice", "postgres"),
		"postgres then alice":    certstest.CommonNames("postgres", "alice"),
		"same name twice":        certstest.CommonNames("alice", "alice"),
		"two CNs in one RDN":     oneRDN,
		"three CNs, alice first": certstest.CommonNames("alice", "bob", "postgres"),
	}
	for name, opt := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cs := clientState(t, ca, "", opt)
			require.Greater(t, commonNameCount(cs.PeerCertificates[0]), 1, "the test certificate has one CN")
			for _, role := range []string{"alice", "postgres", "bob"} {
				err := a.Authorize(cs, role)
				require.ErrorIs(t, err, ErrSeveralCommonNames, "role %s", role)
				assert.Contains(t, err.Error(), "common names (CN); exactly one is required")
				var ae *AuthError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, "several_common_names", ae.Reason())
			}
			assert.ErrorIs(t, a.VerifyPeer(cs), ErrSeveralCommonNames)
		})
	}

	// One CN still works, in the same subject layout (CN as an extra name).
	cs := clientState(t, ca, "", certstest.CommonNames("alice"))
	assert.NoError(t, a.Authorize(cs, "alice"))
	assert.NoError(t, a.VerifyPeer(cs))
}

// VerifyPeer checks the certificate without a role: chain and identity.
func TestVerifyPeer(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	caFile := certstest.WriteFile(t, filepath.Join(t.TempDir(), "ca.crt"), ca.CertPEM())
	a, err := NewAuthorizer(Policy{ClientCAFile: caFile, AllowCN: []string{"alice"}}, nil)
	require.NoError(t, err)
	assert.NoError(t, a.VerifyPeer(clientState(t, ca, "alice")))
	assert.ErrorIs(t, a.VerifyPeer(nil), ErrNoClientCert)
	assert.ErrorIs(t, a.VerifyPeer(clientState(t, certstest.NewCA(t), "alice")), ErrUntrustedClientCert)
	assert.ErrorIs(t, a.VerifyPeer(clientState(t, ca, "mallory")), ErrIdentityNotAllowed)
	var none *Authorizer
	assert.NoError(t, none.VerifyPeer(nil))
}
