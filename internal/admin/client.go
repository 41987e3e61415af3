package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/acl"
)

// ClientTimeout bounds each request: the endpoint is local, so a slow
// answer means something is wrong and the operator should hear about it.
const ClientTimeout = 10 * time.Second

// Client talks to the endpoint.
type Client struct {
	addr string // HOST:PORT, as the operator gave it
	base string // http://HOST:PORT
	http *http.Client
}

// NewClient returns a client of the endpoint at addr (HOST:PORT).
func NewClient(addr string) *Client {
	return &Client{
		addr: addr,
		base: "http://" + addr,
		http: &http.Client{
			Timeout: ClientTimeout,
			// No proxy: HTTP_PROXY must not send ban changes elsewhere.
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		},
	}
}

// APIError is a non-2xx answer from the endpoint.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string { return e.Msg }

// Bans returns the active bans and the endpoint's JSON as it came.
func (c *Client) Bans() ([]acl.BanInfo, []byte, error) {
	var bans []acl.BanInfo
	data, err := c.do(http.MethodGet, "/bans", nil, http.StatusOK, &bans)
	return bans, data, err
}

// Ban bans ip (an address or CIDR) for d, or for the next escalated ban
// time when d is 0.
func (c *Client) Ban(ip string, d time.Duration) (acl.BanInfo, error) {
	req := BanRequest{IP: ip}
	if d > 0 {
		req.For = d.String()
	}
	var b acl.BanInfo
	_, err := c.do(http.MethodPost, "/bans", req, http.StatusCreated, &b)
	return b, err
}

// Unban lifts the ban on ip.
func (c *Client) Unban(ip string) error {
	_, err := c.do(http.MethodDelete, "/bans/"+url.PathEscape(ip), nil, http.StatusNoContent, nil)
	return err
}

// Grants returns the active grants and the endpoint's JSON as it came.
func (c *Client) Grants() ([]GrantJSON, []byte, error) {
	var gs []GrantJSON
	data, err := c.do(http.MethodGet, "/grants", nil, http.StatusOK, &gs)
	return gs, data, err
}

// AddGrant makes (or extends) a grant, and returns it with the endpoint's
// JSON as it came.
func (c *Client) AddGrant(req GrantRequest) (GrantJSON, []byte, error) {
	var g GrantJSON
	data, err := c.do(http.MethodPost, "/grants", req, http.StatusCreated, &g)
	return g, data, err
}

// RevokeGrant revokes the grant with id target, or every grant of the
// source target; keepSessions leaves the sessions they admitted running.
func (c *Client) RevokeGrant(target string, keepSessions bool) error {
	path := "/grants/" + url.PathEscape(target)
	if keepSessions {
		path += "?keep_sessions=true"
	}
	_, err := c.do(http.MethodDelete, path, nil, http.StatusNoContent, nil)
	return err
}

// do sends one request and decodes a 2xx JSON answer into out (if non-nil).
func (c *Client) do(method, path string, body any, want int, out any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding the request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("building the request for %s: %w", c.addr, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, errorf("cannot reach the admin endpoint at %s: %s (is pgwarden serve running with %s %s?)",
			c.addr, describeDialError(err), FieldAddr, c.addr)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer from %s: %w", c.addr, err)
	}
	if resp.StatusCode != want {
		var e errorJSON
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if msg == "" {
			msg = resp.Status
		}
		return nil, &APIError{Status: resp.StatusCode, Msg: msg}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("decoding the answer from %s (is it a pgwarden admin endpoint?): %w", c.addr, err)
		}
	}
	return data, nil
}

// describeDialError reduces a client error to its cause, e.g. "connection
// refused", without the url.Error and net.OpError wrapping.
func describeDialError(err error) string {
	var errno syscall.Errno
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case errors.As(err, &dnsErr):
		return dnsErr.Error()
	case errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Sprintf("no answer within %s", ClientTimeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
