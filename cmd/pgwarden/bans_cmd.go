package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
)

const bansUsage = `Usage:
  pgwarden bans list  [--admin HOST:PORT] [--json]       show active bans
  pgwarden bans ban   IP|CIDR [--for DUR] [--admin ...]  ban a source (without --for: the next escalated ban time)
  pgwarden bans unban IP|CIDR [--admin ...]              lift a ban

These talk to the admin endpoint of a running "pgwarden serve --admin HOST:PORT".
--admin defaults to $PGWARDEN_ADMIN, else ` + defaultAdminAddr + `.
`

// bansClientTimeout bounds each request: the endpoint is local, so a slow
// answer means something is wrong and the operator should hear about it.
const bansClientTimeout = 10 * time.Second

// runBans is `pgwarden bans`.
func runBans(args []string, stdout, stderr io.Writer) int {
	return runBansEnv(args, stdout, stderr, os.Getenv)
}

// runBansEnv is runBans with the environment injected for tests.
func runBansEnv(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, bansUsage)
		return exitUsage
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "list", "ban", "unban":
	case "help", "--help", "-h":
		fmt.Fprint(stdout, bansUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pgwarden: bans: unknown subcommand %q\n\n%s", sub, bansUsage)
		return exitUsage
	}

	fs := pflag.NewFlagSet("bans "+sub, pflag.ContinueOnError)
	// Errors and help are printed below, each to the right stream.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	admin := fs.String("admin", defaultAdminAddr, "HOST:PORT of the admin endpoint (env PGWARDEN_ADMIN)")
	asJSON, forDur := new(bool), new(time.Duration)
	switch sub {
	case "list":
		fs.BoolVar(asJSON, "json", false, "print the endpoint's JSON instead of a table")
	case "ban":
		fs.DurationVar(forDur, "for", 0, "ban length, e.g. 30m or 24h (default: the next escalated ban time)")
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, bansUsage+"\nFlags:\n"+fs.FlagUsages())
			return exitOK
		}
		return bansUsageError(stderr, sub, err.Error())
	}
	if !fs.Changed("admin") {
		if env := getenv("PGWARDEN_ADMIN"); env != "" {
			*admin = env
		}
	}
	if _, _, err := net.SplitHostPort(*admin); err != nil {
		return bansUsageError(stderr, sub, fmt.Sprintf("--admin %q: expected HOST:PORT", *admin))
	}

	wantArgs := 1
	if sub == "list" {
		wantArgs = 0
	}
	if fs.NArg() != wantArgs {
		if wantArgs == 0 {
			return bansUsageError(stderr, sub, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
		}
		return bansUsageError(stderr, sub, "expected one IP address or CIDR prefix")
	}
	if sub == "ban" && fs.Changed("for") && *forDur <= 0 {
		return bansUsageError(stderr, sub, "--for must be positive, e.g. 30m; omit it for the escalated ban time")
	}
	if wantArgs == 1 {
		if err := checkSource(fs.Arg(0)); err != nil {
			return bansUsageError(stderr, sub, err.Error())
		}
	}

	c := newAdminClient(*admin)
	var err error
	switch sub {
	case "list":
		err = c.list(stdout, *asJSON)
	case "ban":
		err = c.ban(stdout, fs.Arg(0), *forDur)
	case "unban":
		err = c.unban(stdout, fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden: %v\n", err)
		var ae *adminAPIError
		if errors.As(err, &ae) && ae.status == http.StatusBadRequest {
			return exitUsage // the endpoint refused what was typed
		}
		return exitRuntime
	}
	return exitOK
}

func bansUsageError(stderr io.Writer, sub, msg string) int {
	fmt.Fprintf(stderr, "pgwarden: bans %s: %s (see pgwarden bans --help)\n", sub, msg)
	return exitUsage
}

// adminClient talks to the admin endpoint.
type adminClient struct {
	addr string // HOST:PORT, as the operator gave it
	base string // http://HOST:PORT
	http *http.Client
}

func newAdminClient(addr string) *adminClient {
	return &adminClient{
		addr: addr,
		base: "http://" + addr,
		http: &http.Client{
			Timeout: bansClientTimeout,
			// No proxy: HTTP_PROXY must not send ban changes elsewhere.
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		},
	}
}

// adminAPIError is a non-2xx answer from the endpoint.
type adminAPIError struct {
	status int
	msg    string
}

func (e *adminAPIError) Error() string { return e.msg }

// do sends one request and decodes a 2xx JSON answer into out (if non-nil).
func (c *adminClient) do(method, path string, body any, want int, out any) ([]byte, error) {
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
		return nil, fmt.Errorf("cannot reach the admin endpoint at %s: %s (is pgwarden serve running with --admin %s?)",
			c.addr, describeDialError(err), c.addr)
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
		return nil, &adminAPIError{status: resp.StatusCode, msg: msg}
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
		return fmt.Sprintf("no answer within %s", bansClientTimeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

func (c *adminClient) list(stdout io.Writer, asJSON bool) error {
	var bans []banJSON
	data, err := c.do(http.MethodGet, "/bans", nil, http.StatusOK, &bans)
	if err != nil {
		return err
	}
	if asJSON {
		_, err := stdout.Write(data)
		return err
	}
	if len(bans) == 0 {
		fmt.Fprintln(stdout, "no active bans")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tUNTIL\tFAILURES\tBANS")
	for _, b := range bans {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", b.IP, b.Until, b.Failures, b.Bans)
	}
	return tw.Flush()
}

func (c *adminClient) ban(stdout io.Writer, ip string, d time.Duration) error {
	req := banRequest{IP: ip}
	if d > 0 {
		req.For = d.String()
	}
	var b banJSON
	if _, err := c.do(http.MethodPost, "/bans", req, http.StatusCreated, &b); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "banned %s until %s (ban #%d)\n", b.IP, b.Until, b.Bans)
	return nil
}

func (c *adminClient) unban(stdout io.Writer, ip string) error {
	if _, err := c.do(http.MethodDelete, "/bans/"+url.PathEscape(ip), nil, http.StatusNoContent, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "unbanned %s\n", ip)
	return nil
}
