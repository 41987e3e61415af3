package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// maxRoleLen is NAMEDATALEN-1: postgres silently truncates a longer startup
// user name, so a role we compared in full could log in as its 63-byte
// prefix. Longer roles are refused rather than guessed at.
const maxRoleLen = 63

// Authorizer decides, after the TLS handshake and the StartupMessage, whether
// the client's certificate may log in as the requested role. It is the
// second half of Policy.ClientCAFile: ServerConfig only requests the
// certificate, so that a refusal can be a postgres FATAL 28000 with a reason
// rather than a bare TLS alert.
//
// The checks, in order:
//  1. a certificate was sent;
//  2. it verifies against --tls-client-ca (intermediates from the client's
//     chain, extended key usage clientAuth, the current time) and, with
//     --tls-client-crl, is not revoked (see crlSet.check);
//  3. its subject has at most one CN: Go's Subject.CommonName is the last
//     CN of the subject and postgres's clientcert=verify-full (OpenSSL's
//     X509_NAME_get_text_by_NID) takes the first, so "CN=alice, CN=postgres"
//     would be postgres to one and alice to the other; such a certificate
//     is refused rather than given either reading;
//  4. if --tls-allow-cn / --tls-allow-san are given, its CN, a DNS SAN or a
//     URI SAN (e.g. a SPIFFE ID) is listed;
//  5. the role: if the certificate's CN or one of its URI SANs has
//     --tls-map-user / --tls-map-file entries, the role must be one of them;
//     otherwise the role must equal the CN (postgres's clientcert=verify-full).
//
// A nil *Authorizer allows everything, which is what NewAuthorizer returns
// when no client CA is configured, so callers may call Authorize
// unconditionally.
type Authorizer struct {
	caFile, mapFile string
	crlFile         string
	allowCN         map[string]bool
	allowDNS        map[string]bool // lowercased: DNS names compare case-insensitively
	allowURI        map[string]bool
	flagRoles       roleMap // from --tls-map-user; fixed for the process
	logger          *zap.Logger
	now             func() time.Time

	state    atomic.Pointer[authState]
	reloadMu sync.Mutex
	// onReload runs after each new state is put in force (SetOnReload).
	onReload atomic.Pointer[func()]
}

// authState is what Reload replaces: the CA pool, the role map merged
// from the flags and the map file, and the CRLs (nil without a CRL file).
type authState struct {
	pool  *x509.CertPool
	roles roleMap
	crls  *crlSet
}

// NewAuthorizer builds an Authorizer from p, reading p.ClientCAFile and
// p.MapFile. It returns (nil, nil) when p.ClientCAFile is empty, and an error
// naming the flag if identity rules are given without a client CA (they
// would otherwise be silently ignored). A nil logger means zap.NewNop().
func NewAuthorizer(p Policy, logger *zap.Logger) (*Authorizer, error) {
	if p.ClientCAFile == "" {
		var errs []error
		for _, f := range []struct {
			field fielderr.Field
			set   bool
		}{
			{FieldAllowCN, len(p.AllowCN) > 0},
			{FieldAllowSAN, len(p.AllowSAN) > 0},
			{FieldMapUser, len(p.MapUser) > 0},
			{FieldMapFile, p.MapFile != ""},
			{FieldClientCRL, p.ClientCRLFile != ""},
		} {
			if f.set {
				errs = append(errs, errorf("%s needs %s: without it no client certificate is requested", f.field, FieldClientCA))
			}
		}
		return nil, errors.Join(errs...)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	a := &Authorizer{
		caFile:   p.ClientCAFile,
		mapFile:  p.MapFile,
		crlFile:  p.ClientCRLFile,
		allowCN:  map[string]bool{},
		allowDNS: map[string]bool{},
		allowURI: map[string]bool{},
		logger:   logger,
		now:      time.Now,
	}
	var errs []error
	for _, cn := range p.AllowCN {
		if cn == "" {
			errs = append(errs, errorf("%s: empty common name", FieldAllowCN))
			continue
		}
		a.allowCN[cn] = true
	}
	for _, san := range p.AllowSAN {
		if err := a.addAllowSAN(san); err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	if a.flagRoles, err = parseMapFlags(p.MapUser); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	st, err := a.load()
	if err != nil {
		return nil, err
	}
	a.state.Store(st)
	return a, nil
}

func (a *Authorizer) addAllowSAN(san string) error {
	switch {
	case san == "":
		return errorf("%s: empty value", FieldAllowSAN)
	case strings.Contains(san, "://"):
		u, err := parseURISAN(san)
		if err != nil {
			return errorf("%s %q: %w", FieldAllowSAN, san, err)
		}
		a.allowURI[u] = true
	case strings.ContainsAny(san, " \t/:@"):
		return errorf("%s %q: not a DNS name or a URI (e.g. spiffe://example.org/ci)", FieldAllowSAN, san)
	default:
		a.allowDNS[strings.ToLower(strings.TrimSuffix(san, "."))] = true
	}
	return nil
}

// load reads the CA file and map file into a new state without touching the
// current one.
func (a *Authorizer) load() (*authState, error) {
	data, err := readFile(FieldClientCA, a.caFile)
	if err != nil {
		return nil, err
	}
	cas, err := parseCertificates(FieldClientCA, a.caFile, data)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	now := a.now()
	for _, c := range cas {
		if now.After(c.NotAfter) {
			a.logger.Warn("client CA certificate has expired; certificates it issued will be refused",
				zap.String("file", a.caFile), zap.String("subject", c.Subject.String()), zap.Time("not_after", c.NotAfter))
		}
		pool.AddCert(c)
	}
	crls, err := loadCRLs(a.crlFile, cas, now, a.logger)
	if err != nil {
		return nil, err
	}
	roles := a.flagRoles
	if a.mapFile != "" {
		fileRoles, err := readMapFile(a.mapFile)
		if err != nil {
			return nil, err
		}
		roles = mergeRoles(a.flagRoles, fileRoles)
	}
	return &authState{pool: pool, roles: roles, crls: crls}, nil
}

// Reload re-reads --tls-client-ca, --tls-map-file and --tls-client-crl. On
// error the previous CA pool, map and CRL stay in force, the error is logged
// at error level and returned. A nil Authorizer has nothing to reload.
func (a *Authorizer) Reload() error {
	if a == nil {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	st, err := a.load()
	if err != nil {
		a.logger.Error("client CA reload failed; still using the previous CA and map", zap.Error(err))
		return err
	}
	a.state.Store(st)
	a.logger.Info("client CA reloaded", zap.String("file", a.caFile), zap.String("map_file", a.mapFile))
	a.reloaded()
	return nil
}

// SetOnReload sets f to run after each reload puts a new CA pool, map
// and CRL in force (Reload, a CRL file change, a Stage's commit), e.g. to
// end the sessions of certificates the new CRL revokes (Revoked). A nil
// Authorizer ignores it.
func (a *Authorizer) SetOnReload(f func()) {
	if a != nil {
		a.onReload.Store(&f)
	}
}

func (a *Authorizer) reloaded() {
	if f := a.onReload.Load(); f != nil && *f != nil {
		(*f)()
	}
}

// Revoked reports whether the CRLs in force revoke the client certificate
// a peer presented (its certificates as sent, leaf first), with the
// *AuthError of kind ErrRevokedClientCert; nil otherwise. A chain that no
// longer verifies, or a CRL past its NextUpdate, is not a revocation: it
// keeps new connections out (Authorize), but is no reason to cut sessions
// already authorized. A nil Authorizer revokes nothing.
func (a *Authorizer) Revoked(peer []*x509.Certificate) error {
	if a == nil || len(peer) == 0 {
		return nil
	}
	st := a.state.Load()
	if st.crls == nil {
		return nil
	}
	chains, err := verifyChains(peer, st.pool, a.now())
	if err != nil {
		return nil
	}
	var ae *AuthError
	if err := st.crls.check(peer[0], chains, a.now()); errors.As(err, &ae) && ae.Kind == ErrRevokedClientCert {
		return err
	}
	return nil
}

// verifyChains verifies peer[0] for client authentication against roots,
// with the rest of peer as intermediates.
func verifyChains(peer []*x509.Certificate, roots *x509.CertPool, now time.Time) ([][]*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	return peer[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// Stage reads --tls-client-ca, --tls-map-file and --tls-client-crl as
// Reload does, without putting them in force; commit does (see
// Loader.Stage). A nil Authorizer stages nothing.
func (a *Authorizer) Stage() (commit func(), err error) {
	if a == nil {
		return func() {}, nil
	}
	st, err := a.load()
	if err != nil {
		return nil, err
	}
	return func() {
		a.reloadMu.Lock()
		defer a.reloadMu.Unlock()
		a.state.Store(st)
		a.logger.Info("client CA reloaded", zap.String("file", a.caFile), zap.String("map_file", a.mapFile))
		a.reloaded()
	}, nil
}

// Authorize checks cs's client certificate and whether it may log in as
// role. The result is nil or an *AuthError whose Error() is safe to send to
// the unauthenticated client in a FATAL 28000; its Cause is for the log.
// Call it once per connection, after reading the StartupMessage and before
// dialing postgres.
func (a *Authorizer) Authorize(cs *tls.ConnectionState, role string) error {
	if a == nil {
		return nil
	}
	leaf, st, err := a.verifyPeer(cs)
	if err != nil {
		return err
	}
	if !roleAllowed(st.roles, leaf, role) {
		return &AuthError{
			Kind:   ErrRoleNotAllowed,
			Public: fmt.Sprintf("certificate %q may not log in as role %q", identityOf(leaf), truncate(role, 64)),
		}
	}
	return nil
}

// VerifyPeer is Authorize without the role: checks 1 to 4. It is for a
// CancelRequest, which names no role; the result is nil or an *AuthError.
func (a *Authorizer) VerifyPeer(cs *tls.ConnectionState) error {
	if a == nil {
		return nil
	}
	_, _, err := a.verifyPeer(cs)
	return err
}

// verifyPeer runs checks 1 to 4 and returns the verified leaf and the state
// (role map) it was checked against.
func (a *Authorizer) verifyPeer(cs *tls.ConnectionState) (*x509.Certificate, *authState, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return nil, nil, &AuthError{Kind: ErrNoClientCert, Public: "client certificate required"}
	}
	st := a.state.Load()
	leaf := cs.PeerCertificates[0]
	chains, err := verifyChains(cs.PeerCertificates, st.pool, a.now())
	if err != nil {
		return nil, nil, &AuthError{Kind: ErrUntrustedClientCert, Public: untrustedText(err), Cause: err}
	}
	if err := st.crls.check(leaf, chains, a.now()); err != nil {
		return nil, nil, err
	}
	if n := commonNameCount(leaf); n > 1 {
		return nil, nil, &AuthError{
			Kind:   ErrSeveralCommonNames,
			Public: fmt.Sprintf("client certificate has %d common names (CN); exactly one is required, as the role it maps to would be ambiguous", n),
		}
	}
	if !a.identityAllowed(leaf) {
		return nil, nil, &AuthError{
			Kind:   ErrIdentityNotAllowed,
			Public: fmt.Sprintf("certificate identity %q is not allowed", identityOf(leaf)),
		}
	}
	return leaf, st, nil
}

// oidCommonName is id-at-commonName (RFC 5280 appendix A).
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// commonNameCount counts the CN attributes of c's subject, in every RDN
// (Subject.Names holds all of them; Subject.CommonName only the last).
func commonNameCount(c *x509.Certificate) int {
	n := 0
	for _, atv := range c.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			n++
		}
	}
	return n
}

// untrustedText names the verification failure in terms a client operator
// can act on, without echoing anything of ours beyond the reason.
func untrustedText(err error) string {
	var (
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &unknown):
		return "client certificate not trusted: unknown authority"
	case errors.As(err, &invalid):
		switch invalid.Reason {
		case x509.Expired:
			return "client certificate not trusted: expired or not yet valid"
		case x509.IncompatibleUsage:
			return "client certificate not trusted: not valid for client authentication"
		}
	}
	return "client certificate not trusted"
}

// PeerIdentity names the client certificate in cs for logs (CN, else the
// first URI or DNS SAN), or "" if there is none. It does not verify anything.
func PeerIdentity(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return ""
	}
	return identityOf(cs.PeerCertificates[0])
}

// identityOf names a certificate in messages and logs: its CN, or for a
// certificate without one (many SPIFFE SVIDs) its first URI then DNS SAN.
func identityOf(c *x509.Certificate) string {
	switch {
	case c.Subject.CommonName != "":
		return truncate(c.Subject.CommonName, 64)
	case len(c.URIs) > 0:
		return truncate(c.URIs[0].String(), 256)
	case len(c.DNSNames) > 0:
		return truncate(c.DNSNames[0], 256)
	}
	return "(no name)"
}

func (a *Authorizer) identityAllowed(c *x509.Certificate) bool {
	if len(a.allowCN) == 0 && len(a.allowDNS) == 0 && len(a.allowURI) == 0 {
		return true // no rules: any certificate the CA signed
	}
	if c.Subject.CommonName != "" && a.allowCN[c.Subject.CommonName] {
		return true
	}
	for _, d := range c.DNSNames {
		if a.allowDNS[strings.ToLower(strings.TrimSuffix(d, "."))] {
			return true
		}
	}
	for _, u := range c.URIs {
		if a.allowURI[u.String()] {
			return true
		}
	}
	return false
}

// roleAllowed applies the role rule: mapped identities use only their map
// entries; unmapped ones must log in as their CN.
func roleAllowed(roles roleMap, c *x509.Certificate, role string) bool {
	if role == "" || len(role) > maxRoleLen {
		return false
	}
	keys := make([]string, 0, 1+len(c.URIs))
	if c.Subject.CommonName != "" {
		keys = append(keys, c.Subject.CommonName)
	}
	for _, u := range c.URIs {
		keys = append(keys, u.String())
	}
	mapped := false
	for _, k := range keys {
		if rs, ok := roles[k]; ok {
			mapped = true
			if rs[role] {
				return true
			}
		}
	}
	if mapped {
		return false
	}
	return c.Subject.CommonName != "" && role == c.Subject.CommonName
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
