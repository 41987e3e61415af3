package grantclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Bounds on one grant request.
const (
	requestTimeout   = 30 * time.Second
	maxGrantResponse = 64 << 10
)

// Grant is what the server granted: Source may connect until Until.
type Grant struct {
	ID        string    `json:"id"`
	Source    string    `json:"source"`
	Until     time.Time `json:"until"`
	Reason    string    `json:"reason"`
	Users     []string  `json:"users"`
	Databases []string  `json:"databases"`
	CreatedBy string    `json:"created_by"`
	// JSON is the server's answer as it came, with the fields above and
	// any others (route, rule, claims).
	JSON json.RawMessage `json:"-"`
}

// APIError is an error answer of the grant endpoint.
type APIError struct {
	Status     int
	Message    string
	RetryAfter time.Duration // from Retry-After on 429, else 0
}

// Error names the status, what it means, and the server's message.
func (e *APIError) Error() string {
	var what string
	switch e.Status {
	case http.StatusUnauthorized:
		what = "the token was not accepted"
	case http.StatusForbidden:
		what = "this job may not have a grant"
	case http.StatusConflict:
		what = "conflict"
	case http.StatusRequestEntityTooLarge:
		what = "request too large"
	case http.StatusTooManyRequests:
		what = "too many requests"
	default:
		what = http.StatusText(e.Status)
	}
	if e.Message != "" {
		return fmt.Sprintf("grant refused (%d, %s): %s", e.Status, what, e.Message)
	}
	return fmt.Sprintf("grant refused (%d, %s)", e.Status, what)
}

// Config configures a Client.
type Config struct {
	// URL is the grant endpoint's base, https://HOST[:PORT]; requests go to
	// URL/v1/grants/self.
	URL string
	// TTL, if set, is sent as {"ttl": TTL} (e.g. "20m"); the server caps it.
	TTL string
	// Tokens yields the OIDC token for each request.
	Tokens TokenSource
	// RootCAs verify the grant endpoint (nil: the system roots).
	RootCAs *x509.CertPool
	// Network pins the address family the request leaves from: "tcp4" or
	// "tcp6" (a grant is for the source address the server sees, so it
	// must be the family the database connection will use), or "tcp".
	Network string
	// LocalAddr, if valid, is the local address the request leaves from
	// (a runner with several addresses); it must be of Network's family.
	LocalAddr netip.Addr
	// HTTPClient overrides the client built from RootCAs, Network and
	// LocalAddr.
	HTTPClient *http.Client
}

// Client requests grants.
type Client struct {
	endpoint string
	ttl      string
	tokens   TokenSource
	http     *http.Client
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("grant URL %q: want https://HOST[:PORT]", cfg.URL)
	}
	if u.Scheme != "https" {
		// The request carries a bearer token: never in the clear.
		return nil, fmt.Errorf("grant URL %q: must be https (the request carries the CI token)", cfg.URL)
	}
	if cfg.Tokens == nil {
		return nil, errors.New("grant client: no token source")
	}
	if cfg.TTL != "" {
		if d, err := time.ParseDuration(cfg.TTL); err != nil || d <= 0 {
			return nil, fmt.Errorf("ttl %q: want a positive duration such as 20m", cfg.TTL)
		}
	}
	client := cfg.HTTPClient
	if client == nil {
		network := cfg.Network
		if network == "" {
			network = "tcp"
		}
		d := &net.Dialer{Timeout: requestTimeout}
		if cfg.LocalAddr.IsValid() {
			local := cfg.LocalAddr.Unmap()
			if (network == "tcp4" && !local.Is4()) || (network == "tcp6" && !local.Is6()) {
				return nil, fmt.Errorf("local address %s is not of the family the grant is asked from (%s)", local, network)
			}
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		client = &http.Client{
			Timeout: requestTimeout,
			Transport: &http.Transport{
				DialContext:         func(ctx context.Context, _, addr string) (net.Conn, error) { return d.DialContext(ctx, network, addr) },
				TLSClientConfig:     &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
				TLSHandshakeTimeout: requestTimeout,
				ForceAttemptHTTP2:   true,
			},
			// A redirect could carry the request, and its token, elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &Client{
		endpoint: strings.TrimSuffix(u.String(), "/") + "/v1/grants/self",
		ttl:      cfg.TTL,
		tokens:   cfg.Tokens,
		http:     client,
	}, nil
}

// Request obtains a fresh token and asks for a grant for this source.
func (c *Client) Request(ctx context.Context) (*Grant, error) {
	tok, err := c.tokens.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("getting the OIDC token: %w", err)
	}
	var body io.Reader = http.NoBody
	if c.ttl != "" {
		b, _ := json.Marshal(map[string]string{"ttl": c.ttl})
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, body)
	if err != nil {
		return nil, fmt.Errorf("building the grant request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	if c.ttl != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("requesting a grant from %s: %w", c.endpoint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxGrantResponse+1))
	if err != nil {
		return nil, fmt.Errorf("reading the grant response: %w", err)
	}
	if len(data) > maxGrantResponse {
		return nil, fmt.Errorf("the grant response is larger than %d bytes", maxGrantResponse)
	}
	if resp.StatusCode != http.StatusCreated {
		return nil, apiError(resp, data)
	}
	var g Grant
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("decoding the grant: %w", err)
	}
	if g.Until.IsZero() {
		return nil, errors.New("the grant has no \"until\"")
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err == nil {
		g.JSON = compact.Bytes()
	}
	return &g, nil
}

// apiError decodes {"error": "..."} and Retry-After.
func apiError(resp *http.Response, data []byte) *APIError {
	e := &APIError{Status: resp.StatusCode}
	var body struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &body) == nil {
		e.Message = sanitize(body.Error)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// sanitize keeps a server's message printable and short.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
