package oidcauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds on a key set.
const (
	maxJWKSBytes = 1 << 20
	maxKeys      = 100
	minRSABits   = 2048
)

// The only algorithms accepted: RS256 (GitHub, GitLab) and ES256.
var allowedAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// keyCache is one fetched or loaded key set, indexed by kid.
type keyCache struct {
	byKID map[string][]jose.JSONWebKey
	all   []jose.JSONWebKey
}

func newKeyCache(keys []jose.JSONWebKey) *keyCache {
	c := &keyCache{byKID: map[string][]jose.JSONWebKey{}, all: keys}
	for _, k := range keys {
		c.byKID[k.KeyID] = append(c.byKID[k.KeyID], k)
	}
	return c
}

// lookup returns the keys a token with kid may be verified with: those
// with that kid, or every key for a token without one.
func (c *keyCache) lookup(kid string) []jose.JSONWebKey {
	if c == nil {
		return nil
	}
	if kid == "" {
		return c.all
	}
	return c.byKID[kid]
}

// parseJWKS decodes a JSON Web Key Set. strict (a file the operator
// wrote) makes every unusable key an error naming it; otherwise (a remote
// set, which may carry keys for other uses and algorithms) such keys are
// skipped, as RFC 7517 section 5 asks.
func parseJWKS(data []byte, strict bool) ([]jose.JSONWebKey, error) {
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", maxJWKSBytes)
	}
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decoding key set: %w", err)
	}
	if len(raw.Keys) > maxKeys {
		return nil, fmt.Errorf("key set has %d keys, more than %d", len(raw.Keys), maxKeys)
	}
	var keys []jose.JSONWebKey
	for i, r := range raw.Keys {
		k, err := usableKey(r)
		if err != nil {
			if strict {
				return nil, fmt.Errorf("key %d: %w", i, err)
			}
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("key set has no RSA (2048 bits or more) or P-256 signing key")
	}
	return keys, nil
}

// usableKey decodes one JWK and keeps it only if it can verify RS256 or
// ES256: an RSA key of at least 2048 bits or a P-256 key, public, for
// signatures. A symmetric key is refused outright: accepting one is how
// "HS256 signed with the public key" attacks start.
func usableKey(raw json.RawMessage) (jose.JSONWebKey, error) {
	var meta struct {
		Use string `json:"use"`
		Alg string `json:"alg"`
		Kty string `json:"kty"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("decoding: %w", err)
	}
	if meta.Use != "" && meta.Use != "sig" {
		return jose.JSONWebKey{}, fmt.Errorf("use %q is not sig", meta.Use)
	}
	if meta.Alg != "" && meta.Alg != string(jose.RS256) && meta.Alg != string(jose.ES256) {
		return jose.JSONWebKey{}, fmt.Errorf("alg %q is not RS256 or ES256", meta.Alg)
	}
	if meta.Kty == "oct" {
		return jose.JSONWebKey{}, errors.New("symmetric (oct) keys are not accepted")
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("decoding: %w", err)
	}
	if !k.IsPublic() {
		return jose.JSONWebKey{}, errors.New("a private key: publish only the public key")
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return jose.JSONWebKey{}, fmt.Errorf("RSA key of %d bits; at least %d are needed", pub.N.BitLen(), minRSABits)
		}
		if meta.Alg == string(jose.ES256) {
			return jose.JSONWebKey{}, errors.New("RSA key marked ES256")
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return jose.JSONWebKey{}, fmt.Errorf("EC key on %s; only P-256 (ES256) is accepted", pub.Curve.Params().Name)
		}
		if meta.Alg == string(jose.RS256) {
			return jose.JSONWebKey{}, errors.New("EC key marked RS256")
		}
	default:
		return jose.JSONWebKey{}, fmt.Errorf("key type %T cannot verify RS256 or ES256", k.Key)
	}
	return k, nil
}

// verifyWith checks jws (already parsed with allowedAlgs, one signature)
// against keys. It fails with ErrBadSignature when none verifies.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey) ([]byte, error) {
	alg := jws.Signatures[0].Header.Algorithm
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != alg {
			continue
		}
		switch k.Key.(type) {
		case *rsa.PublicKey:
			if alg != string(jose.RS256) {
				continue
			}
		case *ecdsa.PublicKey:
			if alg != string(jose.ES256) {
				continue
			}
		default:
			continue
		}
		if payload, err := jws.Verify(k.Key); err == nil {
			return payload, nil
		}
	}
	return nil, ErrBadSignature
}
