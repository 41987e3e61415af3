package gateway

import (
	"errors"
	"runtime"
	"time"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
	"github.com/pgwarden/pgwarden/proxy"
)

// RouteConfig is one listen → upstream service, as stunnel's services are:
// its own listeners, upstream, allowlist and TLS files.
type RouteConfig struct {
	Name                string
	Listen              []string // HOST:PORT; HOST an IP, a name, or a go-sockaddr template
	Upstream            string   // HOST:PORT on loopback, or a unix socket (see parseUpstream)
	AllowRemoteUpstream bool
	Allow               []string // acl.ParseAllowlist entries
	TLSCert, TLSKey     string
	TLSMinVersion       string // "1.2" (default) or "1.3"
	TLSClientCA         string
	TLSAllowCN          []string
	TLSAllowSAN         []string
	TLSMapUser          []string
	TLSMapFile          string
	TLSClientCRL        string
	CancelPlaintext     string // "allow", "deny" or "auto" (default)
	// ProxyProtocolFrom lists the load balancers (IPs, CIDRs, templates)
	// that must start every connection with a PROXY header naming the
	// client (proxyproto.ParseTrusted); empty: none.
	ProxyProtocolFrom []string
}

// Config is everything a gateway takes, as the operator writes it.
type Config struct {
	Route  RouteConfig   // the top-level route keys, inherited by Routes
	Routes []RouteConfig // more routes

	HandshakeTimeout    time.Duration
	AuthTimeout         time.Duration
	AuthStepTimeout     time.Duration
	DrainTimeout        time.Duration
	MaxStartups         int
	MaxStartupsPerIP    int
	MaxUpstreamStartups int

	BanMaxRetry   int
	BanFindTime   time.Duration
	BanTime       time.Duration
	BanTimeFactor float64
	BanMaxTime    time.Duration
	BanIgnore     []string
	// BanIgnoreSelf adds the host's own addresses (every address of its
	// interfaces, exact, re-read on Reload) to BanIgnore, as fail2ban's
	// ignoreself does. The command line's default is true.
	BanIgnoreSelf bool
	BanState      string
	BanIPv6Prefix int
	BanMaxTracked int

	Admin string // loopback HOST:PORT of the admin endpoint; "" for none
	// MetricsListen is HOST:PORT, any address, of the read-only endpoint
	// (/metrics, /healthz, /readyz; admin.NewMetrics); "" for none.
	MetricsListen string

	CancelRate              float64
	CancelBurst             int
	CancelUnknownPerFailure int

	Relay string // "auto" (default), "loop" or "goroutines"

	// ProxyProtocolTimeout bounds the wait for a balancer's PROXY header
	// (within HandshakeTimeout); 0 means DefaultProxyProtocolTimeout.
	ProxyProtocolTimeout time.Duration
	// Redis, if set, is the redis:// or rediss:// URL the jail and the
	// grants are shared on with every gateway using it and RedisPrefix.
	Redis       string
	RedisPrefix string // "" means fleet.DefaultPrefix
	// CrowdSecLAPI, if set, is the CrowdSec Local API whose ban decisions
	// are refused at accept; CrowdSecKeyFile holds the bouncer key, and
	// CrowdSecInterval (0: crowdsec.DefaultInterval) paces the pulls.
	CrowdSecLAPI     string
	CrowdSecKeyFile  string
	CrowdSecInterval time.Duration
	// CrowdSecMachineCredentials, if set, is a CrowdSec machine's
	// credentials file (local_api_credentials.yaml: url, login, password):
	// the jail's own bans are pushed to that LAPI as alerts. Its url must
	// be CrowdSecLAPI's when both are set.
	CrowdSecMachineCredentials string

	// Access grants (grants.go): a source outside a route's allowlist
	// may connect while a grant covers it.
	GrantMaxTTL      time.Duration // longest grant; 0 means grants.DefaultMaxTTL
	GrantEndSessions bool          // an expiring grant also ends the sessions it admitted
	GrantListen      string        // HOST:PORT of the self-service endpoint; "" for none
	GrantTLSCert     string        // the endpoint's certificate; "" uses the first route's
	GrantTLSKey      string
	// GrantProxyProtocolFrom lists the load balancers in front of the grant
	// endpoint, whose connections must begin with a PROXY header naming
	// the CI runner (proxyproto.ParseTrusted); empty: none, the TCP peer
	// is the runner.
	GrantProxyProtocolFrom []string
	OIDC                   OIDCConfig // whose tokens the endpoint accepts, and its rules
}

// OIDCConfig is the self-service endpoint's token issuer and rules (the
// `oidc:` section of the configuration file; the issuer, audience and key
// set may also come from flags).
type OIDCConfig struct {
	Issuer   string
	Audience string
	JWKS     string // a file, an https URL, or "" for OIDC discovery
	Rules    []oidcauth.RuleConfig
}

// set reports whether any of it is set.
func (o OIDCConfig) set() bool {
	return o.Issuer != "" || o.Audience != "" || o.JWKS != "" || len(o.Rules) > 0
}

// Defaults for the fields the proxy and the jail do not define.
const (
	DefaultDrainTimeout         = 30 * time.Second
	DefaultProxyProtocolTimeout = 3 * time.Second
	defaultMinVersion           = "1.2"
)

// The fields this package's errors name, beyond those of acl, certs and
// admin (fielderr.Render).
var (
	FieldName                    = field("Name")
	FieldListen                  = field("Listen")
	FieldUpstream                = field("Upstream")
	FieldAllowRemoteUpstream     = field("AllowRemoteUpstream")
	FieldCancelPlaintext         = field("CancelPlaintext")
	FieldHandshakeTimeout        = field("HandshakeTimeout")
	FieldAuthTimeout             = field("AuthTimeout")
	FieldAuthStepTimeout         = field("AuthStepTimeout")
	FieldDrainTimeout            = field("DrainTimeout")
	FieldMaxStartups             = field("MaxStartups")
	FieldMaxStartupsPerIP        = field("MaxStartupsPerIP")
	FieldMaxUpstreamStartups     = field("MaxUpstreamStartups")
	FieldCancelRate              = field("CancelRate")
	FieldCancelBurst             = field("CancelBurst")
	FieldCancelUnknownPerFailure = field("CancelUnknownPerFailure")
	FieldRelay                   = field("Relay")
	FieldBanState                = field("BanState")
	FieldProxyProtocolTimeout    = field("ProxyProtocolTimeout")
	FieldRedis                   = field("Redis")
	FieldRedisPrefix             = field("RedisPrefix")
	FieldCrowdSecLAPI            = field("CrowdSecLAPI")
	FieldCrowdSecKeyFile         = field("CrowdSecKeyFile")
	FieldCrowdSecInterval        = field("CrowdSecInterval")
	// FieldCrowdSecMachineCredentials is the machine credentials file.
	FieldCrowdSecMachineCredentials = field("CrowdSecMachineCredentials")
	FieldGrantMaxTTL                = field("GrantMaxTTL")
	FieldGrantEndSessions           = field("GrantEndSessions")
	FieldGrantListen                = field("GrantListen")
	FieldGrantTLSCert               = field("GrantTLSCert")
	FieldGrantTLSKey                = field("GrantTLSKey")
	FieldGrantProxyProtocolFrom     = field("GrantProxyProtocolFrom")
	// FieldOIDC is the OIDC section; its rules' errors follow it as
	// ".rules[N]...".
	FieldOIDC          = field("OIDC")
	FieldBanIgnoreSelf = field("BanIgnoreSelf")
	// MakeCertificate is not a field but the advice on how to make a
	// certificate and key, which only the caller knows how to give.
	MakeCertificate = field("a certificate and key from your CA")
)

func field(name string) fielderr.Field { return fielderr.Field{Pkg: "gateway", Name: name} }

var errorf = fielderr.Errorf

// ConfigError is a problem with the configuration, found before anything
// listens (the command line exits 2 for it). Others are runtime failures.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// configError marks err as a ConfigError (nil stays nil).
func configError(err error) error {
	if err == nil {
		return nil
	}
	return &ConfigError{err}
}

// AllRoutes returns the routes to serve: the top-level one (if it has any
// listener, or there are no others) and the other routes. A route inherits
// the top-level TLS, allow and upstream settings it does not set itself, as
// stunnel's services inherit global options.
func (c *Config) AllRoutes() []RouteConfig {
	var out []RouteConfig
	top := c.Route
	if len(c.Routes) == 0 || len(top.Listen) > 0 {
		if top.Name == "" {
			top.Name = "default"
		}
		out = append(out, top)
	}
	for _, r := range c.Routes {
		inherit(&r.Upstream, top.Upstream)
		inherit(&r.TLSCert, top.TLSCert)
		inherit(&r.TLSKey, top.TLSKey)
		inherit(&r.TLSClientCA, top.TLSClientCA)
		inherit(&r.TLSMapFile, top.TLSMapFile)
		inherit(&r.TLSClientCRL, top.TLSClientCRL)
		inherit(&r.TLSMinVersion, top.TLSMinVersion)
		inheritList(&r.Allow, top.Allow)
		inheritList(&r.TLSAllowCN, top.TLSAllowCN)
		inheritList(&r.TLSAllowSAN, top.TLSAllowSAN)
		inheritList(&r.TLSMapUser, top.TLSMapUser)
		inherit(&r.CancelPlaintext, top.CancelPlaintext)
		inheritList(&r.ProxyProtocolFrom, top.ProxyProtocolFrom)
		r.AllowRemoteUpstream = r.AllowRemoteUpstream || top.AllowRemoteUpstream
		out = append(out, r)
	}
	return out
}

func inherit(dst *string, top string) {
	if *dst == "" {
		*dst = top
	}
}

func inheritList(dst *[]string, top []string) {
	if len(*dst) == 0 {
		*dst = top
	}
}

// routePrefix is how an error names its route: not at all when there is
// only the top-level one.
func (c *Config) routePrefix(r RouteConfig) string {
	if len(c.Routes) > 0 {
		return "route " + r.Name + ": "
	}
	return ""
}

// Validate checks what can be checked without touching the network or
// files, collecting every problem; each names its field and the fix.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, errorf(format, a...)) }
	for _, r := range c.AllRoutes() {
		at := c.routePrefix(r)
		if len(r.Listen) == 0 {
			add("%s%s is required: add %s HOST:PORT (e.g. %s '{{ GetPrivateIP }}:5432')", at, FieldListen, FieldListen, FieldListen)
		}
		if r.Upstream == "" {
			add("%s%s is required: add %s 127.0.0.1:5432 (or the postgres unix socket directory)", at, FieldUpstream, FieldUpstream)
		}
		if len(r.Allow) == 0 {
			add("%sno allowlist: add %s CIDR for the sources that may connect (e.g. %s 10.0.0.0/8)", at, acl.FieldAllow, acl.FieldAllow)
		}
		if r.TLSCert == "" || r.TLSKey == "" {
			add("%s%s and %s are required: TLS is mandatory (%s)", at, certs.FieldCert, certs.FieldKey, MakeCertificate)
		}
		if _, err := parsePlaintextCancel(r.CancelPlaintext); err != nil {
			add("%s%w", at, err)
		}
	}
	if c.HandshakeTimeout <= 0 {
		add("%s must be positive, e.g. 10s", FieldHandshakeTimeout)
	}
	if c.AuthTimeout < c.HandshakeTimeout {
		add("%s (%s) must be at least %s (%s)", FieldAuthTimeout, c.AuthTimeout, FieldHandshakeTimeout, c.HandshakeTimeout)
	}
	if c.DrainTimeout < 0 {
		add("%s must not be negative", FieldDrainTimeout)
	}
	if c.MaxStartups <= 0 || c.MaxStartupsPerIP <= 0 {
		add("%s and %s must be at least 1", FieldMaxStartups, FieldMaxStartupsPerIP)
	}
	if c.AuthStepTimeout <= 0 {
		add("%s must be positive, e.g. 10s", FieldAuthStepTimeout)
	}
	if c.MaxUpstreamStartups <= 0 {
		add("%s must be at least 1 (e.g. 32 for postgres's default max_connections 100)", FieldMaxUpstreamStartups)
	}
	if c.Admin != "" {
		if _, err := admin.ValidateAddr(c.Admin); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MetricsListen != "" {
		if _, err := admin.ValidateMetricsAddr(c.MetricsListen); err != nil {
			errs = append(errs, err)
		}
	}
	if !(c.CancelRate > 0) || c.CancelBurst < 1 {
		add("%s must be positive and %s at least 1 (e.g. %s 10 %s 50)", FieldCancelRate, FieldCancelBurst, FieldCancelRate, FieldCancelBurst)
	}
	if c.CancelUnknownPerFailure < 0 {
		add("%s must not be negative (0 never counts unknown cancel keys toward a ban)", FieldCancelUnknownPerFailure)
	}
	if _, err := parseRelayMode(c.Relay); err != nil {
		errs = append(errs, err)
	}
	if c.ProxyProtocolTimeout < 0 {
		add("%s must be positive, e.g. 3s", FieldProxyProtocolTimeout)
	}
	if c.CrowdSecInterval < 0 {
		add("%s must be positive, e.g. 10s", FieldCrowdSecInterval)
	}
	if c.CrowdSecKeyFile != "" && c.CrowdSecLAPI == "" {
		add("%s needs %s: the URL of the CrowdSec Local API (e.g. http://127.0.0.1:8080/)", FieldCrowdSecKeyFile, FieldCrowdSecLAPI)
	}
	errs = append(errs, c.validateGrants())
	return errors.Join(errs...)
}

// parsePlaintextCancel reads CancelPlaintext ("" is auto).
func parsePlaintextCancel(s string) (proxy.PlaintextCancel, error) {
	switch s {
	case "", "auto":
		return proxy.PlaintextCancelAuto, nil
	case "allow":
		return proxy.PlaintextCancelAllow, nil
	case "deny":
		return proxy.PlaintextCancelDeny, nil
	}
	return 0, errorf("%s %q: use allow, deny or auto", FieldCancelPlaintext, s)
}

// parseRelayMode reads Relay ("" is auto).
func parseRelayMode(s string) (proxy.RelayMode, error) {
	switch s {
	case "", "auto":
		return proxy.RelayAuto, nil
	case "goroutines":
		return proxy.RelayGoroutines, nil
	case "loop":
		if runtime.GOOS != "linux" {
			return 0, errorf("%s loop needs Linux (epoll); use %s auto or %s goroutines", FieldRelay, FieldRelay, FieldRelay)
		}
		return proxy.RelayLoop, nil
	}
	return 0, errorf("%s %q: use auto, loop or goroutines", FieldRelay, s)
}
