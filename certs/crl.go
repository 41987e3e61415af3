package certs

import (
	"context"
	"crypto/x509"
	"fmt"
	"math"
	"math/big"
	"time"

	"go.uber.org/zap"
)

// crlSet is the parsed --tls-client-crl: for each CA of --tls-client-ca,
// the revoked serial numbers and how long its list may be relied on. A nil
// *crlSet (no --tls-client-crl) revokes nothing.
type crlSet struct {
	file string
	byCA map[string]*caCRL // key: the CA certificate's DER
}

// caCRL is one CA's revocation list.
type caCRL struct {
	ca         *x509.Certificate
	number     *big.Int
	nextUpdate time.Time
	revoked    map[string]x509.RevocationListEntry // key: serial, decimal
}

// loadCRLs reads file and matches each CRL in it to the CA of cas that
// signed it. It is all or nothing, in the spirit of postgres's ssl_crl_file
// (OpenSSL with X509_V_FLAG_CRL_CHECK, where a certificate whose issuer has
// no CRL fails with "unable to get certificate CRL"): every CA in cas must
// have a CRL, every CRL must be signed by one of cas, so a CRL that names the
// wrong CA is a configuration error and not a silently unused file. A CRL
// past its NextUpdate is loaded (and logged at error level); Authorize then
// refuses that CA's certificates, see check.
func loadCRLs(file string, cas []*x509.Certificate, now time.Time, logger *zap.Logger) (*crlSet, error) {
	if file == "" {
		return nil, nil
	}
	data, err := readFile(FieldClientCRL, file)
	if err != nil {
		return nil, err
	}
	crls, err := parseCRLs(FieldClientCRL, file, data)
	if err != nil {
		return nil, err
	}
	set := &crlSet{file: file, byCA: map[string]*caCRL{}}
	for i, crl := range crls {
		var signer *x509.Certificate
		for _, ca := range cas {
			if crl.CheckSignatureFrom(ca) == nil {
				signer = ca
				break
			}
		}
		if signer == nil {
			return nil, errorf("%s %s: CRL #%d (issuer %q) is not signed by any CA in %s", FieldClientCRL, file, i+1, crl.Issuer.String(), FieldClientCA)
		}
		if old, ok := set.byCA[string(signer.Raw)]; ok && old.number != nil && crl.Number != nil && old.number.Cmp(crl.Number) > 0 {
			continue // two CRLs of one CA: the higher number is the newer
		}
		c := &caCRL{ca: signer, number: crl.Number, nextUpdate: crl.NextUpdate, revoked: map[string]x509.RevocationListEntry{}}
		for _, e := range crl.RevokedCertificateEntries {
			c.revoked[e.SerialNumber.String()] = e
		}
		set.byCA[string(signer.Raw)] = c
	}
	for _, ca := range cas {
		if _, ok := set.byCA[string(ca.Raw)]; !ok {
			return nil, errorf("%s %s: no CRL from %q of %s: every client CA needs one (pgwarden certs crl %s DIR writes an empty one)", FieldClientCRL, file, ca.Subject.String(), FieldClientCA, FieldDir)
		}
	}
	for _, c := range set.byCA {
		logger.Info("certificate revocation list loaded", zap.String("file", file), zap.String("issuer", c.ca.Subject.String()),
			zap.Stringer("number", c.number), zap.Int("revoked", len(c.revoked)), zap.Time("next_update", c.nextUpdate))
	}
	set.warnIfExpiring(now, DefaultExpiryWarning, logger)
	return set, nil
}

// check refuses leaf if the CA that issued it in any verified chain lists
// it, or cannot vouch for it: no CRL for that issuer (an intermediate the
// client sent: only the CAs of --tls-client-ca have CRLs), or a CRL past its
// NextUpdate. The last follows postgres, whose OpenSSL fails a certificate
// with "CRL has expired" then: a CRL past NextUpdate may lack revocations
// made since, and a gateway that kept using it would let a revoked
// certificate in for as long as its CRL went unrenewed; refusing makes a
// stalled CRL distribution visible within NextUpdate.
func (s *crlSet) check(leaf *x509.Certificate, chains [][]*x509.Certificate, now time.Time) error {
	if s == nil {
		return nil
	}
	for _, chain := range chains {
		if len(chain) < 2 {
			continue // the leaf is itself a trusted CA certificate
		}
		c, ok := s.byCA[string(chain[1].Raw)]
		if !ok {
			return &AuthError{Kind: ErrClientCertStatusUnknown, Public: "client certificate status unknown: no certificate revocation list for its issuer",
				Cause: errorf("issuer %q is not a CA of %s, so %s cannot cover it", chain[1].Subject.String(), FieldClientCA, FieldClientCRL)}
		}
		if now.After(c.nextUpdate) {
			return &AuthError{Kind: ErrClientCertStatusUnknown, Public: "client certificate status unknown: certificate revocation list expired",
				Cause: fmt.Errorf("the CRL of %q in %s expired at %s; re-sign it (pgwarden certs crl)", c.ca.Subject.String(), s.file, c.nextUpdate.UTC().Format(time.RFC3339))}
		}
		if e, revoked := c.revoked[leaf.SerialNumber.String()]; revoked {
			return &AuthError{Kind: ErrRevokedClientCert, Public: "client certificate revoked",
				Cause: fmt.Errorf("serial %s revoked at %s (reason code %d) by CRL %s of %s", leaf.SerialNumber.Text(16), e.RevocationTime.UTC().Format(time.RFC3339), e.ReasonCode, c.number, s.file)}
		}
	}
	return nil
}

// warnIfExpiring logs at warn for each CRL that passes NextUpdate within
// `within`, and at error for one that has passed it.
func (s *crlSet) warnIfExpiring(now time.Time, within time.Duration, logger *zap.Logger) {
	if s == nil {
		return
	}
	for _, c := range s.byCA {
		left := c.nextUpdate.Sub(now)
		fields := []zap.Field{
			zap.String("file", s.file), zap.String("issuer", c.ca.Subject.String()),
			zap.Time("next_update", c.nextUpdate), zap.Int("days_left", int(math.Floor(left.Hours()/24))),
		}
		switch {
		case left <= 0:
			logger.Error("certificate revocation list has expired; every client certificate of its CA is refused until it is re-signed (pgwarden certs crl)", fields...)
		case left <= within:
			logger.Warn("certificate revocation list expires soon; re-sign it (pgwarden certs crl), it is reloaded on change", fields...)
		}
	}
}

// Watch reloads the Authorizer (client CA, map file and CRL together, as
// SIGHUP does) when the --tls-client-crl file changes, so `certs revoke`
// takes effect without a signal, and checks the CRL's NextUpdate daily. It
// returns at once without a CRL or for a nil Authorizer, and otherwise when
// ctx is done; an error means watching could not start (SIGHUP still works).
func (a *Authorizer) Watch(ctx context.Context) error {
	if a == nil || a.crlFile == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		daily(ctx, func() { a.state.Load().crls.warnIfExpiring(a.now(), DefaultExpiryWarning, a.logger) })
	}()
	err := fileWatch{
		what:     "certificate revocation list",
		files:    []string{a.crlFile},
		logger:   a.logger,
		debounce: defaultDebounce,
		reload:   func() { _ = a.Reload() }, // logged inside; the old state stays
	}.run(ctx)
	cancel()
	<-done
	return err
}
