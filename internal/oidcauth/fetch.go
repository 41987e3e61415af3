package oidcauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// fetchTimeout bounds one key-set or discovery request.
const fetchTimeout = 10 * time.Second

// remoteFetcher gets the key set from jwksURL, or from the jwks_uri that
// OIDC discovery on issuer names when jwksURL is "".
type remoteFetcher struct {
	issuer string
	client *http.Client

	mu      sync.Mutex
	jwksURL string // discovered once, then kept
}

func (f *remoteFetcher) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	f.mu.Lock()
	u := f.jwksURL
	f.mu.Unlock()
	if u == "" {
		var err error
		if u, err = f.discover(ctx); err != nil {
			return nil, err
		}
		f.mu.Lock()
		f.jwksURL = u
		f.mu.Unlock()
	}
	data, err := f.get(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("fetching the key set %s: %w", u, err)
	}
	keys, err := parseJWKS(data, false)
	if err != nil {
		return nil, fmt.Errorf("key set %s: %w", u, err)
	}
	return keys, nil
}

// discover reads the issuer's OpenID configuration for its jwks_uri. The
// document must name the same issuer (OIDC Discovery 1.0, section 4.3).
func (f *remoteFetcher) discover(ctx context.Context) (string, error) {
	u := strings.TrimSuffix(f.issuer, "/") + "/.well-known/openid-configuration"
	data, err := f.get(ctx, u)
	if err != nil {
		return "", fmt.Errorf("OIDC discovery %s: %w", u, err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", fmt.Errorf("OIDC discovery %s: decoding: %w", u, err)
	}
	if doc.Issuer != f.issuer {
		return "", fmt.Errorf("OIDC discovery %s: the document is for issuer %q, not %q", u, doc.Issuer, f.issuer)
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("OIDC discovery %s: jwks_uri: %w", u, err)
	}
	return doc.JWKSURI, nil
}

// get fetches u, bounded in time and size; only 200 is an answer.
func (f *remoteFetcher) get(ctx context.Context, u string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("answer larger than %d bytes", maxJWKSBytes)
	}
	return data, nil
}

// newFetchClient is the default client: bounded, no redirects to other
// schemes (a redirect to http would let a network attacker supply keys).
func newFetchClient() *http.Client {
	return &http.Client{
		Timeout: fetchTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			return checkFetchURL(req.URL.String())
		},
	}
}

// checkFetchURL accepts https URLs, and http ones only to a loopback
// address (a local test or sidecar): keys fetched in the clear from
// anywhere else could be swapped by anyone on the path.
func checkFetchURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
			return nil
		}
		if host == "localhost" {
			return nil
		}
		return fmt.Errorf("%q: use https (plain http is accepted only on loopback)", s)
	}
	return fmt.Errorf("%q: want an https URL", s)
}
