package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/grantclient"
)

const grantsUsage = `Usage:
  pgwarden grants add SOURCE --ttl DUR --reason TEXT [--user ROLE]... [--database DB]... [--route NAME] [--admin HOST:PORT]
        admit SOURCE (an IP or a CIDR) for DUR, optionally only as these roles to
        these databases, on one route; prints the grant as one JSON object
  pgwarden grants list [--json] [--admin HOST:PORT]
        the active grants, as a table (or the admin endpoint's JSON)
  pgwarden grants revoke ID|SOURCE [--keep-sessions] [--admin HOST:PORT]
        end a grant (or every grant of SOURCE) and the sessions it admitted,
        unless --keep-sessions
  pgwarden grants request --url https://HOST:PORT [--ttl DUR] [--token-env VAR | --github | --gitlab VAR]
                          [--cacert FILE] [--audience AUD] [--bind IP]
        the CI side: obtains the job's OIDC token and asks the gateway's grant
        endpoint to admit the address this request comes from; prints the
        grant as one JSON object (exit 0), or the server's reason (exit 1)

add, list and revoke talk to the admin endpoint of a running "pgwarden serve
--admin HOST:PORT"; --admin defaults to $PGWARDEN_ADMIN, else ` + admin.DefaultAddr + `.

Token sources (exactly one):
  --github        GitHub Actions: requested from ACTIONS_ID_TOKEN_REQUEST_URL with the
                  audience --audience (default: the --url origin, e.g. https://db.example.com:8443);
                  the job needs "permissions: id-token: write"
  --gitlab VAR    GitLab CI: the variable an "id_tokens:" entry defines (its aud: must be
                  the gateway's --oidc-audience)
  --token-env VAR any CI: a JWT in the environment variable VAR

The request leaves from the address family of the --url host's first
address, so connect to the database by the same name (or address family).
`

// grantsRequestTimeout bounds getting the token and the grant.
const grantsRequestTimeout = time.Minute

// runGrants is `pgwarden grants`.
func runGrants(args []string, stdout, stderr io.Writer) int {
	return runGrantsEnv(args, stdout, stderr, os.Getenv)
}

// runGrantsEnv is runGrants with the environment injected for tests.
func runGrantsEnv(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, grantsUsage)
		return exitUsage
	}
	switch args[0] {
	case "request":
		return runGrantsRequest(args[1:], stdout, stderr, getenv)
	case "add", "list", "revoke":
		return runGrantsAdmin(args[0], args[1:], stdout, stderr, getenv)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, grantsUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pgwarden: grants: unknown subcommand %q\n\n%s", args[0], grantsUsage)
		return exitUsage
	}
}

// grantsRequestConfig is what `grants request` takes.
type grantsRequestConfig struct {
	URL      string
	TTL      string
	TokenEnv string
	GitHub   bool
	GitLab   string
	CACert   string
	Audience string
	Bind     string
}

func runGrantsRequest(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &grantsRequestConfig{}
	fs := pflag.NewFlagSet("grants request", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&c.URL, "url", "", "https://HOST[:PORT] of the gateway's grant endpoint (required)")
	fs.StringVar(&c.TTL, "ttl", "", "grant length to ask for, e.g. 20m (default: the longest the server allows)")
	fs.StringVar(&c.TokenEnv, "token-env", "", "take the OIDC token from this environment variable")
	fs.BoolVar(&c.GitHub, "github", false, "request the OIDC token from GitHub Actions (needs permissions: id-token: write)")
	fs.StringVar(&c.GitLab, "gitlab", "", "take the OIDC token from this GitLab id_tokens variable")
	fs.StringVar(&c.CACert, "cacert", "", "CA certificates (PEM) that verify the grant endpoint (default: the system roots)")
	fs.StringVar(&c.Audience, "audience", "", "audience of the GitHub token (default: the --url origin)")
	fs.StringVar(&c.Bind, "bind", "", "local IP address the request leaves from (default: the system's choice); the grant is for the address the gateway sees")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, grantsUsage+"\nFlags:\n"+fs.FlagUsages())
			return exitOK
		}
		return clientUsageFail(stderr, "grants request", fmt.Errorf("%w (pgwarden grants request --help lists the flags)", err))
	}
	if fs.NArg() > 0 {
		return clientUsageFail(stderr, "grants request", fmt.Errorf("unexpected argument %q: grants request takes only flags", fs.Arg(0)))
	}
	hostport, bind, verr := c.validate()
	roots, rerr := loadCACert(c.CACert)
	if err := errors.Join(verr, rerr); err != nil {
		return clientUsageFail(stderr, "grants request", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), grantsRequestTimeout)
	defer cancel()
	// A grant admits the source address the server sees, and a dual-stack
	// runner has one per family: ask from the family the database
	// connection to this host will most likely use (its first address).
	network, err := grantclient.Family(ctx, hostport)
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden grants request: %v\n", err)
		return exitRuntime
	}
	if bind.IsValid() && (bind.Is4() != (network == "tcp4")) {
		return clientUsageFail(stderr, "grants request", fmt.Errorf("--bind %s: the database connection will use %s (the first address of %s), so the grant must be asked from there too",
			bind, map[string]string{"tcp4": "IPv4", "tcp6": "IPv6"}[network], hostport))
	}
	gc, err := grantclient.New(grantclient.Config{URL: c.URL, TTL: c.TTL, Tokens: c.tokens(getenv), RootCAs: roots, Network: network, LocalAddr: bind})
	if err != nil {
		return clientUsageFail(stderr, "grants request", err)
	}
	g, err := gc.Request(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden grants request: %v\n", err)
		return exitRuntime
	}
	// The server's grant as it came (route, rule and claims included), on
	// one line.
	out := append(append([]byte(nil), g.JSON...), '\n')
	if len(g.JSON) == 0 {
		out, _ = json.Marshal(g)
		out = append(out, '\n')
	}
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintf(stderr, "pgwarden grants request: writing the grant: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stderr, "pgwarden grants request: %s may connect until %s (grant %s)\n",
		g.Source, g.Until.UTC().Format(time.RFC3339), g.ID)
	return exitOK
}

// validate checks the flags together, naming each offending flag, and
// returns the endpoint's HOST:PORT and the --bind address.
func (c *grantsRequestConfig) validate() (string, netip.Addr, error) {
	var errs []error
	var hostport string
	var bind netip.Addr
	if c.Bind != "" {
		ip, err := netip.ParseAddr(c.Bind)
		if err != nil || ip.Zone() != "" {
			errs = append(errs, fmt.Errorf("--bind %q: want a local IP address, such as 10.0.3.7", c.Bind))
		} else {
			bind = ip.Unmap()
		}
	}
	if c.URL == "" {
		errs = append(errs, errors.New("--url is required: the gateway's grant endpoint, https://HOST:PORT"))
	} else if u, err := url.Parse(c.URL); err != nil || u.Host == "" || u.Hostname() == "" {
		errs = append(errs, fmt.Errorf("--url %q: want https://HOST[:PORT]", c.URL))
	} else if u.Scheme != "https" {
		errs = append(errs, fmt.Errorf("--url %q: must be https (the request carries the CI token)", c.URL))
	} else {
		port := u.Port()
		if port == "" {
			port = "443"
		}
		hostport = net.JoinHostPort(u.Hostname(), port)
	}
	n := 0
	for _, set := range []bool{c.TokenEnv != "", c.GitHub, c.GitLab != ""} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		errs = append(errs, errors.New("no token source: give --github (GitHub Actions), --gitlab VAR (GitLab id_tokens) or --token-env VAR"))
	case n > 1:
		errs = append(errs, errors.New("--github, --gitlab and --token-env exclude each other: choose where the OIDC token comes from"))
	}
	if c.Audience != "" && !c.GitHub {
		errs = append(errs, errors.New("--audience applies to --github only (other CIs set the audience where they define the token)"))
	}
	if c.TTL != "" {
		if d, err := time.ParseDuration(c.TTL); err != nil || d < time.Second {
			errs = append(errs, fmt.Errorf("--ttl %q: want a duration of at least 1s, such as 20m", c.TTL))
		}
	}
	return hostport, bind, errors.Join(errs...)
}

// tokens is the token source the flags chose.
func (c *grantsRequestConfig) tokens(getenv func(string) string) grantclient.TokenSource {
	switch {
	case c.GitHub:
		aud := c.Audience
		if aud == "" {
			aud = grantclient.Origin(c.URL)
		}
		return grantclient.GitHubToken{Audience: aud, Getenv: getenv}
	case c.GitLab != "":
		return gitlabToken{grantclient.EnvToken{Name: c.GitLab, Getenv: getenv}}
	default:
		return grantclient.EnvToken{Name: c.TokenEnv, Getenv: getenv}
	}
}

// gitlabToken is an EnvToken whose error says how GitLab provides one.
type gitlabToken struct{ grantclient.EnvToken }

func (g gitlabToken) Token(ctx context.Context) (string, error) {
	tok, err := g.EnvToken.Token(ctx)
	if err != nil {
		return "", fmt.Errorf("%w (declare it in .gitlab-ci.yml: id_tokens: {%s: {aud: AUDIENCE}})", err, g.Name)
	}
	return tok, nil
}

// loadCACert reads --cacert, or returns nil (the system roots).
func loadCACert(file string) (*x509.CertPool, error) {
	pool, err := clienttls.LoadRootCAs(file)
	if err != nil {
		return nil, fielderr.Rename(err, fielderr.Names{clienttls.FieldRootCert: "--cacert"})
	}
	return pool, nil
}
