package main

import (
	"errors"
	"fmt"
	"sort"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/crowdsec"
	"github.com/pgwarden/pgwarden/internal/fleet"
	"github.com/pgwarden/pgwarden/internal/gateway"
	"github.com/pgwarden/pgwarden/proxy"
)

// serveConfig is everything `pgwarden serve` takes: the gateway's settings,
// bound to flags of the same names (YAML keys are the flag names), and how
// to log.
type serveConfig struct {
	gateway.Config
	ConfigFile string
	LogFormat  string
	LogLevel   string
}

// routeFlags defines the per-route flags on fs, bound to rc. The same set
// describes a routes: entry in the YAML file.
func routeFlags(fs *pflag.FlagSet, rc *gateway.RouteConfig) {
	fs.StringArrayVar(&rc.Listen, "listen", nil, "HOST:PORT to listen on (repeatable); HOST may be an IP, a name, or a go-sockaddr template such as '{{ GetPrivateIP }}'")
	fs.StringVar(&rc.Upstream, "upstream", "", "postgres address: HOST:PORT on loopback, a unix socket file, or a socket directory with :PORT")
	markPath(fs, "upstream", pathUpstream)
	fs.BoolVar(&rc.AllowRemoteUpstream, "allow-remote-upstream", false, "permit a non-loopback upstream")
	fs.StringArrayVar(&rc.Allow, "allow", nil, "source IP, CIDR or go-sockaddr template allowed to connect (repeatable; at least one)")
	pathVar(fs, &rc.TLSCert, "tls-cert", "server certificate chain (PEM)")
	pathVar(fs, &rc.TLSKey, "tls-key", "server private key (PEM)")
	fs.StringVar(&rc.TLSMinVersion, "tls-min-version", "", "lowest TLS version accepted: 1.2 (the default) or 1.3")
	pathVar(fs, &rc.TLSClientCA, "tls-client-ca", "CA bundle (PEM): require and verify a client certificate")
	fs.StringArrayVar(&rc.TLSAllowCN, "tls-allow-cn", nil, "client certificate common name allowed to connect (repeatable)")
	fs.StringArrayVar(&rc.TLSAllowSAN, "tls-allow-san", nil, "client certificate DNS or URI SAN allowed to connect (repeatable)")
	fs.StringArrayVar(&rc.TLSMapUser, "tls-map-user", nil, "CN=ROLE: certificate CN may log in as ROLE (repeatable; default: role must equal CN)")
	pathVar(fs, &rc.TLSMapFile, "tls-map-file", "file of 'CN ROLE' lines, like pg_ident.conf")
	pathVar(fs, &rc.TLSClientCRL, "tls-client-crl", "certificate revocation list (PEM) of each --tls-client-ca CA: listed client certificates are refused")
	fs.StringVar(&rc.Name, "name", "", "route name used in logs and metrics")
	fs.StringArrayVar(&rc.ProxyProtocolFrom, "proxy-protocol-from", nil, "load balancer IP or CIDR (repeatable) whose connections MUST start with a PROXY v1 or v2 header; the client it names is the one checked against the allowlist, bans and grants, and logged")
	fs.StringVar(&rc.CancelPlaintext, "cancel-plaintext", "", "cancel requests sent without TLS, as psql before 17 sends them: allow, deny, or auto (the default: deny on a route with --tls-client-ca, allow elsewhere)")
}

// newServeFlags builds the serve flag set bound to c.
func newServeFlags(c *serveConfig) *pflag.FlagSet {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {} // runServe prints help to stdout
	fs.StringVar(&c.ConfigFile, "config", "", "YAML config file; its keys are the flag names, and flags given here override it")
	routeFlags(fs, &c.Route)
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", proxy.DefaultHandshakeTimeout, "accept → TLS done → StartupMessage read, overall")
	fs.DurationVar(&c.AuthTimeout, "auth-timeout", proxy.DefaultAuthTimeout, "accept → authentication finished, overall")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", gateway.DefaultDrainTimeout, "on SIGTERM, how long sessions may finish")
	fs.IntVar(&c.MaxStartups, "max-startups", proxy.DefaultMaxStartups, "connections not yet authenticated, all sources together")
	fs.IntVar(&c.MaxStartupsPerIP, "max-startups-per-source", proxy.DefaultMaxStartupsPerIP, "connections not yet authenticated, per source IP")
	fs.DurationVar(&c.AuthStepTimeout, "auth-step-timeout", proxy.DefaultAuthStepTimeout, "how long the client may take to answer each authentication request; running out counts as a failed login")
	fs.IntVar(&c.MaxUpstreamStartups, "max-upstream-startups", proxy.DefaultMaxUpstreamStartups, "connections to one upstream still authenticating, all sources together; keep it below postgres's max_connections minus superuser_reserved_connections and your sessions")
	fs.StringVar(&c.LogFormat, "log-format", "json", "json or console")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&c.BanMaxRetry, "ban-max-retry", acl.DefaultBanMaxRetry, "failed logins from one source within --ban-find-time that ban it (fail2ban maxretry)")
	fs.DurationVar(&c.BanFindTime, "ban-find-time", acl.DefaultBanFindTime, "window in which failures are counted (fail2ban findtime)")
	fs.DurationVar(&c.BanTime, "ban-time", acl.DefaultBanTime, "length of a first ban (fail2ban bantime)")
	fs.Float64Var(&c.BanTimeFactor, "ban-time-factor", acl.DefaultBanTimeFactor, "each repeat ban of a source multiplies the last by this (fail2ban bantime.increment)")
	fs.DurationVar(&c.BanMaxTime, "ban-max-time", acl.DefaultBanMaxTime, "cap on an escalated ban (fail2ban bantime.maxtime)")
	fs.StringArrayVar(&c.BanIgnore, "ban-ignore", nil, "source IP or CIDR never banned (repeatable; fail2ban ignoreip)")
	fs.BoolVar(&c.BanIgnoreSelf, "ban-ignore-self", true, "never count or ban the host's own addresses (every address of its interfaces, e.g. 127.0.0.1 and ::1; re-read on SIGHUP; fail2ban ignoreself)")
	pathVar(fs, &c.BanState, "ban-state", "file where bans and ban history persist (bbolt); empty keeps them in memory")
	fs.IntVar(&c.BanIPv6Prefix, "ban-ipv6-prefix", acl.DefaultIPv6Prefix, "IPv6 sources are also counted and banned per prefix of this length (32-128)")
	fs.IntVar(&c.BanMaxTracked, "ban-max-tracked", acl.DefaultMaxTracked, "sources whose failures are tracked at once; the oldest are forgotten first")
	fs.StringVar(&c.Admin, "admin", "", "loopback HOST:PORT for the admin HTTP endpoint (bans, /healthz, /readyz, /metrics)")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "", "HOST:PORT, any address (':9188' for every interface), for /metrics, /healthz and /readyz alone: for Prometheus and container probes; no authentication")
	fs.Float64Var(&c.CancelRate, "cancel-rate", proxy.DefaultCancelRate, "cancel requests per second one source (IPv4 address, IPv6 /64) may send; more are dropped")
	fs.IntVar(&c.CancelBurst, "cancel-burst", proxy.DefaultCancelBurst, "cancel requests one source may send at once before --cancel-rate applies")
	fs.IntVar(&c.CancelUnknownPerFailure, "cancel-unknown-per-failure", proxy.DefaultCancelUnknownPerFailure, "every N cancel requests with an unknown key from one source count as one failed login toward --ban-max-retry (0: never)")
	fs.StringVar(&c.Relay, "relay", "auto", "what relays authenticated sessions: auto (event loops on Linux, goroutines elsewhere), loop, or goroutines (two per session; relies on nothing crypto/tls does not promise)")
	fs.DurationVar(&c.ProxyProtocolTimeout, "proxy-protocol-timeout", gateway.DefaultProxyProtocolTimeout, "how long a --proxy-protocol-from balancer may take to send its PROXY header")
	fs.StringVar(&c.Redis, "redis", "", "redis://[user:password@]host:port[/db] or rediss://: failure counts, bans and grants are shared by every gateway using it (best in the --config file: a password on the command line is visible to other users)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", fleet.DefaultPrefix, "key prefix on --redis, so several fleets can share one Redis")
	fs.StringVar(&c.CrowdSecLAPI, "crowdsec-lapi", "", "CrowdSec Local API URL (e.g. http://127.0.0.1:8080/): its ban decisions for IPs and ranges are refused at accept")
	pathVar(fs, &c.CrowdSecKeyFile, "crowdsec-key-file", "file holding the bouncer API key (cscli bouncers add pgwarden)")
	fs.DurationVar(&c.CrowdSecInterval, "crowdsec-interval", crowdsec.DefaultInterval, "how often the CrowdSec decision stream is pulled")
	pathVar(fs, &c.CrowdSecMachineCredentials, "crowdsec-machine-credentials", "CrowdSec machine credentials (cscli machines add pgwarden --auto -f FILE): the jail's own bans are pushed to that LAPI as alerts")
	grantFlags(fs, &c.Config)
	return fs
}

// routeKeys are the flag names a routes: entry may use.
var routeKeys = func() map[string]bool {
	fs := pflag.NewFlagSet("route", pflag.ContinueOnError)
	routeFlags(fs, &gateway.RouteConfig{})
	keys := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { keys[f.Name] = true })
	return keys
}()

// parseServeArgs parses serve's command line and, if --config is given, the
// YAML file underneath it: a flag on the command line replaces the file's
// value (the whole list, for a repeatable flag).
func parseServeArgs(args []string) (*serveConfig, error) {
	return parseServeArgsWith(args, "serve", nil)
}

// parseServeArgsWith is parseServeArgs for command cmd, which takes the
// flags of extra besides serve's (check's --json): on the command line
// only, never as YAML keys.
func parseServeArgsWith(args []string, cmd string, extra *pflag.FlagSet) (*serveConfig, error) {
	c := &serveConfig{}
	fs := newServeFlags(c)
	if extra != nil {
		fs.AddFlagSet(extra)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, errHelp
		}
		return nil, usageError{fmt.Errorf("%w (pgwarden %s --help lists the flags)", err, cmd)}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Errorf("unexpected argument %q: %s takes only flags", fs.Arg(0), cmd)}
	}
	if c.ConfigFile != "" {
		fromCLI := map[string]bool{}
		fs.Visit(func(f *pflag.Flag) { fromCLI[f.Name] = true })
		if err := applyFile(c, fs, fromCLI, extra); err != nil {
			return nil, fileError{err}
		}
	}
	return c, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validate checks what can be checked without touching the network or
// files, collecting every problem; each names its flag and the fix.
func (c *serveConfig) validate() error {
	errs := c.loggingErrors()
	errs = append(errs, c.Config.Validate())
	return withFlagNames(errors.Join(errs...))
}

// loggingErrors are the problems with --log-format and --log-level.
func (c *serveConfig) loggingErrors() []error {
	var errs []error
	switch c.LogFormat {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: use json or console", c.LogFormat))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q: use debug, info, warn or error", c.LogLevel))
	}
	return errs
}

// errHelp is returned when --help was asked for.
var errHelp = errors.New("help requested")

// fileError marks a problem of the --config file (still a usage error for
// the exit status), which check reports as a failed check rather than a
// command line it cannot parse.
type fileError struct{ error }

func (f fileError) Unwrap() error { return f.error }

// usageError marks a problem with the command line or the --config file
// (exit 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }
