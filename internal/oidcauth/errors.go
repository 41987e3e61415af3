package oidcauth

import (
	"errors"
	"fmt"
	"time"
)

// Causes wrapped by VerifyError.Err, for errors.Is in callers and tests.
var (
	// ErrUnknownKey: the token's kid is not in the key set.
	ErrUnknownKey = errors.New("unknown key id")
	// ErrKeysUnavailable: the key set could not be fetched.
	ErrKeysUnavailable = errors.New("key set unavailable")
	// ErrBadSignature: a key with the token's kid did not verify it.
	ErrBadSignature = errors.New("signature does not verify")
	// ErrReplayed is ReplayCache.Use's answer for a jti seen before.
	ErrReplayed = errors.New("token already used")
)

// Public reasons of a refused token. They are fixed texts: nothing from the
// token is ever echoed.
const (
	ReasonMissing      = "no bearer token"
	ReasonTooLarge     = "token too large"
	ReasonMalformed    = "malformed token"
	ReasonAlgorithm    = "token signing algorithm not accepted (only RS256 and ES256 are)"
	ReasonUnknownKey   = "token signed by an unknown key"
	ReasonSignature    = "token signature is invalid"
	ReasonIssuer       = "token issuer not accepted"
	ReasonAudience     = "token audience not accepted"
	ReasonExpired      = "token expired"
	ReasonNotYetValid  = "token not valid yet (nbf is in the future)"
	ReasonIssuedFuture = "token issued in the future (iat)"
	ReasonTooOld       = "token issued too long ago (iat)"
	ReasonNoJTI        = "token has no jti (needed against replay)"
	ReasonNoSubject    = "token has no sub"
	ReasonClaims       = "malformed token claims"
	ReasonUnavailable  = "the issuer's signing keys cannot be fetched now; try again later"
)

// VerifyError is a refused token: Reason is the public text, Err the cause
// for the log. Unavailable marks a refusal that is not the client's fault
// (the key set could not be fetched): answer 503 and do not count it
// against the source.
type VerifyError struct {
	Reason      string
	Unavailable bool
	Err         error
}

func (e *VerifyError) Error() string {
	if e.Err != nil {
		return e.Reason + ": " + e.Err.Error()
	}
	return e.Reason
}

func (e *VerifyError) Unwrap() error { return e.Err }

func refuse(reason string, err error) *VerifyError { return &VerifyError{Reason: reason, Err: err} }

// ReplayFullError is ReplayCache.Use's answer when it is full of unexpired
// entries: try again after RetryAfter.
type ReplayFullError struct {
	RetryAfter time.Duration
}

func (e *ReplayFullError) Error() string {
	return fmt.Sprintf("replay cache full of unexpired tokens; retry in %s", e.RetryAfter)
}
