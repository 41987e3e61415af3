package certs

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// CRLName is the certificate revocation list in the CA directory, the file
// to give the gateway as --tls-client-crl.
const CRLName = "crl.pem"

// DefaultCRLValidity is how far ahead a written CRL's NextUpdate lies. The
// gateway refuses every certificate of a CA whose CRL is past NextUpdate
// (as postgres does with ssl_crl_file), so NextUpdate bounds how long a
// gateway can go on using a copy that missed a revocation; it warns from
// 14 days before. Re-sign with `certs crl` (e.g. weekly from cron) to move it.
const DefaultCRLValidity = 30 * 24 * time.Hour

// RevocationReasons are the --reason values (RFC 5280 §5.3.1 CRLReason).
// certificateHold is left out: a revocation here is permanent.
var RevocationReasons = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
}

// CRLInfo describes a CRL that was written.
type CRLInfo struct {
	Path                   string
	Number                 *big.Int
	ThisUpdate, NextUpdate time.Time
	Entries                int
}

// RevokedCert is one certificate Revoke dealt with.
type RevokedCert struct {
	Serial   *big.Int
	Name     string    // "" if the serial is not in the issued record
	NotAfter time.Time // zero if unknown
	// Already: the CRL listed it before; nothing changed for it.
	Already bool
}

// RevokeResult is what Revoke did.
type RevokeResult struct {
	Certs   []RevokedCert
	Expired int     // certificates of NAME skipped because they have expired
	CRL     CRLInfo // zero when nothing was written
}

// signedCRL is a CRL ready to write.
type signedCRL struct {
	CRLInfo
	pem []byte
}

// Revoke adds the certificates named by target to DIR/crl.pem, signed by
// the CA in dir, and rewrites it (temporary file, then rename) with the
// next CRL number. target is a client name from DIR/issued.jsonl (every
// certificate issued under it that has not expired is revoked) or else a
// serial number in hex (colons allowed, as openssl prints them), which is
// revoked even if the record does not know it (certificates made by other
// tooling from the same CA). reason is a RevocationReasons key ("" means
// unspecified); validity 0 means DefaultCRLValidity.
func Revoke(dir, target, reason string, validity time.Duration) (RevokeResult, error) {
	code, ok := RevocationReasons[reason]
	if !ok && reason != "" {
		return RevokeResult{}, usageErrorf("%s %q: use one of %s", FieldReason, reason, strings.Join(reasonNames(), ", "))
	}
	if target == "" {
		return RevokeResult{}, usageErrorf("NAME or SERIAL is required: the client name given to certs issue, or the certificate's serial number")
	}
	ca, key, err := loadCA(dir)
	if err != nil {
		return RevokeResult{}, err
	}
	records, err := readIssued(dir)
	if err != nil {
		return RevokeResult{}, err
	}
	now := time.Now()
	var res RevokeResult
	for _, r := range records {
		if r.Name != target {
			continue
		}
		if now.After(r.NotAfter) {
			res.Expired++
			continue
		}
		serial, _ := parseSerial(r.Serial) // readIssued checked it
		res.Certs = append(res.Certs, RevokedCert{Serial: serial, Name: r.Name, NotAfter: r.NotAfter})
	}
	if len(res.Certs) == 0 && res.Expired == 0 {
		serial, ok := parseSerial(target)
		if !ok {
			return RevokeResult{}, usageErrorf("%q is neither a client name in %s nor a serial number (hex, as `openssl x509 -noout -serial` prints it)", target, filepath.Join(dir, IssuedName))
		}
		rc := RevokedCert{Serial: serial}
		for _, r := range records {
			if s, _ := parseSerial(r.Serial); s.Cmp(serial) == 0 {
				rc.Name, rc.NotAfter = r.Name, r.NotAfter
			}
		}
		res.Certs = append(res.Certs, rc)
	}
	prev, err := readCRL(dir, ca)
	if err != nil {
		return RevokeResult{}, err
	}
	listed := map[string]bool{}
	if prev != nil {
		for _, e := range prev.RevokedCertificateEntries {
			listed[e.SerialNumber.String()] = true
		}
	}
	var add []x509.RevocationListEntry
	for i, c := range res.Certs {
		if listed[c.Serial.String()] {
			res.Certs[i].Already = true
			continue
		}
		listed[c.Serial.String()] = true // the same serial twice in the record
		add = append(add, x509.RevocationListEntry{SerialNumber: c.Serial, RevocationTime: now.UTC(), ReasonCode: code})
	}
	if len(add) == 0 {
		return res, nil // nothing new: the CRL stays as it is
	}
	crl, err := signCRL(ca, key, prev, add, validity, now)
	if err != nil {
		return RevokeResult{}, err
	}
	if res.CRL, err = writeCRL(dir, crl); err != nil {
		return RevokeResult{}, err
	}
	return res, nil
}

// RefreshCRL writes DIR/crl.pem again with the same entries, the next
// number and a new NextUpdate (creating an empty one if there is none), so
// the gateway keeps accepting the CA's certificates.
func RefreshCRL(dir string, validity time.Duration) (CRLInfo, error) {
	ca, key, err := loadCA(dir)
	if err != nil {
		return CRLInfo{}, err
	}
	prev, err := readCRL(dir, ca)
	if err != nil {
		return CRLInfo{}, err
	}
	crl, err := signCRL(ca, key, prev, nil, validity, time.Now())
	if err != nil {
		return CRLInfo{}, err
	}
	return writeCRL(dir, crl)
}

func writeCRL(dir string, crl signedCRL) (CRLInfo, error) {
	crl.Path = filepath.Join(dir, CRLName)
	if err := writeFiles(true, []fileContent{{crl.Path, crl.pem, 0o644}}); err != nil {
		return CRLInfo{}, err
	}
	return crl.CRLInfo, nil
}

// readCRL reads DIR/crl.pem and checks that ca signed it; a missing file
// is nil.
func readCRL(dir string, ca *x509.Certificate) (*x509.RevocationList, error) {
	path := filepath.Join(dir, CRLName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	crls, err := parseCRLs(FieldDir, path, data)
	if err != nil {
		return nil, err
	}
	if len(crls) != 1 {
		return nil, errorf("%s %s: holds %d CRLs; certs revoke maintains exactly one, from %s", FieldDir, path, len(crls), filepath.Join(dir, CACertName))
	}
	if err := crls[0].CheckSignatureFrom(ca); err != nil {
		return nil, errorf("%s %s: not signed by %s (was the CA replaced?); move it away to start a new list: %w", FieldDir, path, filepath.Join(dir, CACertName), err)
	}
	return crls[0], nil
}

// signCRL makes the successor of prev (nil: the first CRL) with add
// appended: number prev+1, ThisUpdate now, NextUpdate now+validity but not
// past the CA's end.
func signCRL(ca *x509.Certificate, key crypto.Signer, prev *x509.RevocationList, add []x509.RevocationListEntry, validity time.Duration, now time.Time) (signedCRL, error) {
	switch {
	case validity == 0:
		validity = DefaultCRLValidity
	case validity < 0:
		return signedCRL{}, usageErrorf("%s %s: must be positive", FieldNextUpdate, validity)
	}
	number := big.NewInt(1)
	var entries []x509.RevocationListEntry
	if prev != nil {
		if prev.Number != nil {
			number.Add(prev.Number, number)
		}
		for _, e := range prev.RevokedCertificateEntries {
			// Only what CreateRevocationList encodes; the parsed entry's
			// Raw and Extensions would duplicate the reason code.
			entries = append(entries, x509.RevocationListEntry{SerialNumber: e.SerialNumber, RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode})
		}
	}
	entries = append(entries, add...)
	next := now.Add(validity)
	if next.After(ca.NotAfter) {
		next = ca.NotAfter
	}
	tmpl := &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.Add(-backdate).UTC(),
		NextUpdate:                next.UTC(),
		RevokedCertificateEntries: entries,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca, key)
	if err != nil {
		return signedCRL{}, fmt.Errorf("signing the revocation list: %w", err)
	}
	return signedCRL{
		CRLInfo: CRLInfo{Number: number, ThisUpdate: tmpl.ThisUpdate, NextUpdate: tmpl.NextUpdate, Entries: len(entries)},
		pem:     pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}),
	}, nil
}

// parseCRLs returns every X509 CRL block in data, in order.
func parseCRLs(field fielderr.Field, file string, data []byte) ([]*x509.RevocationList, error) {
	var crls []*x509.RevocationList
	sawCert := false
	for _, block := range pemBlocks(data) {
		switch block.Type {
		case "X509 CRL":
			crl, err := x509.ParseRevocationList(block.Bytes)
			if err != nil {
				return nil, errorf("%s %s: parsing CRL #%d: %w", field, file, len(crls)+1, err)
			}
			crls = append(crls, crl)
		case "CERTIFICATE":
			sawCert = true
		}
	}
	if len(crls) == 0 {
		if sawCert {
			return nil, errorf("%s %s: holds a certificate, not a revocation list (are %s and %s swapped?)", field, file, FieldClientCA, FieldClientCRL)
		}
		return nil, errorf("%s %s: no PEM X509 CRL block found", field, file)
	}
	return crls, nil
}

// parseSerial reads a serial number in hex: "3f9a…", "0x3f9a…" or
// "3F:9A:…". RFC 5280 serials are positive and at most 20 octets.
func parseSerial(s string) (*big.Int, bool) {
	h := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s), "0x"), ":", "")
	if h == "" || len(h) > 40 {
		return nil, false
	}
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || n.Sign() <= 0 {
		return nil, false
	}
	return n, true
}

func reasonNames() []string {
	names := make([]string, 0, len(RevocationReasons))
	for n := range RevocationReasons {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return RevocationReasons[names[i]] < RevocationReasons[names[j]] })
	return names
}
