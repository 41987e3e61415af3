package certs

import (
	"errors"
	"fmt"
	"io"
)

// Sentinels for errors.Is. The Authorizer's errors match one of the Err*Cert
// / Err*Allowed values so callers can label metrics without parsing text.
var (
	// ErrNoClientCert: the client sent no certificate.
	ErrNoClientCert = errors.New("client certificate required")
	// ErrUntrustedClientCert: the chain does not verify against --tls-client-ca.
	ErrUntrustedClientCert = errors.New("client certificate not trusted")
	// ErrIdentityNotAllowed: the certificate verifies but matches no
	// --tls-allow-cn / --tls-allow-san entry.
	ErrIdentityNotAllowed = errors.New("certificate identity not allowed")
	// ErrSeveralCommonNames: the subject has more than one CN, so the
	// identity is ambiguous (see Authorizer).
	ErrSeveralCommonNames = errors.New("client certificate has several common names")
	// ErrRoleNotAllowed: the identity may not log in as the requested role.
	ErrRoleNotAllowed = errors.New("role not allowed for certificate identity")
	// ErrRevokedClientCert: --tls-client-crl lists the certificate.
	ErrRevokedClientCert = errors.New("client certificate revoked")
	// ErrClientCertStatusUnknown: --tls-client-crl cannot vouch for the
	// certificate (its CRL has expired, or its issuer has none).
	ErrClientCertStatusUnknown = errors.New("client certificate status unknown")
	// ErrExists: certs init/issue refused to overwrite a file.
	ErrExists = errors.New("file already exists")
)

// AuthError is the Authorizer's refusal. Error() is Public, which is safe to
// send to an unauthenticated client; Cause (e.g. the x509 verification error)
// is for the log only.
type AuthError struct {
	Kind   error  // one of the Err* sentinels above
	Public string // text for the FATAL 28000 ErrorResponse
	Cause  error  // detail for logs; may be nil
}

func (e *AuthError) Error() string { return e.Public }

// Format prints Public for %v and %s, and Public plus Cause for %+v, so
// zap.Error(err) logs the cause as "errorVerbose" while err.Error() (what
// goes on the wire) never contains it.
func (e *AuthError) Format(f fmt.State, verb rune) {
	_, _ = io.WriteString(f, e.Public)
	if verb == 'v' && f.Flag('+') && e.Cause != nil {
		_, _ = io.WriteString(f, ": "+e.Cause.Error())
	}
}

// Unwrap exposes both the sentinel and the cause to errors.Is/As.
func (e *AuthError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Cause}
}

// Reason is a short stable label for metrics and logs.
func (e *AuthError) Reason() string {
	switch e.Kind {
	case ErrNoClientCert:
		return "no_client_cert"
	case ErrUntrustedClientCert:
		return "untrusted_client_cert"
	case ErrIdentityNotAllowed:
		return "identity_not_allowed"
	case ErrRoleNotAllowed:
		return "role_not_allowed"
	case ErrSeveralCommonNames:
		return "several_common_names"
	case ErrRevokedClientCert:
		return "revoked_client_cert"
	case ErrClientCertStatusUnknown:
		return "client_cert_status_unknown"
	default:
		return "other"
	}
}
