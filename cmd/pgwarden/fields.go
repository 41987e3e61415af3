package main

import (
	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/forward"
	"github.com/pgwarden/pgwarden/internal/gateway"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
)

// flagNames names the libraries' configuration fields by the flags that
// set them (YAML keys are the same names without the dashes). Every error
// a library returns or logs about one of its fields is rendered with these
// names, so the libraries need not know the command line.
var flagNames = fielderr.Names{
	gateway.FieldName:                       "--name",
	gateway.FieldListen:                     "--listen",
	gateway.FieldUpstream:                   "--upstream",
	gateway.FieldAllowRemoteUpstream:        "--allow-remote-upstream",
	gateway.FieldCancelPlaintext:            "--cancel-plaintext",
	gateway.FieldHandshakeTimeout:           "--handshake-timeout",
	gateway.FieldAuthTimeout:                "--auth-timeout",
	gateway.FieldAuthStepTimeout:            "--auth-step-timeout",
	gateway.FieldDrainTimeout:               "--drain-timeout",
	gateway.FieldMaxStartups:                "--max-startups",
	gateway.FieldMaxStartupsPerIP:           "--max-startups-per-source",
	gateway.FieldMaxUpstreamStartups:        "--max-upstream-startups",
	gateway.FieldCancelRate:                 "--cancel-rate",
	gateway.FieldCancelBurst:                "--cancel-burst",
	gateway.FieldCancelUnknownPerFailure:    "--cancel-unknown-per-failure",
	gateway.FieldRelay:                      "--relay",
	gateway.FieldBanState:                   "--ban-state",
	gateway.FieldProxyProtocolTimeout:       "--proxy-protocol-timeout",
	gateway.FieldRedis:                      "--redis",
	gateway.FieldRedisPrefix:                "--redis-prefix",
	gateway.FieldCrowdSecLAPI:               "--crowdsec-lapi",
	gateway.FieldCrowdSecKeyFile:            "--crowdsec-key-file",
	gateway.FieldCrowdSecInterval:           "--crowdsec-interval",
	gateway.FieldCrowdSecMachineCredentials: "--crowdsec-machine-credentials",
	proxyproto.FieldTrusted:                 "--proxy-protocol-from",
	gateway.FieldBanIgnoreSelf:              "--ban-ignore-self",
	gateway.MakeCertificate:                 "`pgwarden certs init --dir DIR --host NAME` makes a pair",
	gateway.FieldGrantMaxTTL:                "--grant-max-ttl",
	gateway.FieldGrantEndSessions:           "--grant-end-sessions",
	gateway.FieldGrantListen:                "--grant-listen",
	gateway.FieldGrantProxyProtocolFrom:     "--grant-proxy-protocol-from",
	gateway.FieldGrantTLSCert:               "--grant-tls-cert",
	gateway.FieldGrantTLSKey:                "--grant-tls-key",
	gateway.FieldOIDC:                       oidcKey,

	oidcauth.FieldIssuer:   "--oidc-issuer",
	oidcauth.FieldAudience: "--oidc-audience",
	oidcauth.FieldJWKS:     "--oidc-jwks",

	acl.FieldAllow:      "--allow",
	acl.FieldIgnore:     "--ban-ignore",
	acl.FieldMaxRetry:   "--ban-max-retry",
	acl.FieldFindTime:   "--ban-find-time",
	acl.FieldBanTime:    "--ban-time",
	acl.FieldTimeFactor: "--ban-time-factor",
	acl.FieldMaxTime:    "--ban-max-time",
	acl.FieldIPv6Prefix: "--ban-ipv6-prefix",
	acl.FieldMaxTracked: "--ban-max-tracked",

	certs.FieldCert:       "--tls-cert",
	certs.FieldKey:        "--tls-key",
	certs.FieldMinVersion: "--tls-min-version",
	certs.FieldClientCA:   "--tls-client-ca",
	certs.FieldAllowCN:    "--tls-allow-cn",
	certs.FieldAllowSAN:   "--tls-allow-san",
	certs.FieldMapUser:    "--tls-map-user",
	certs.FieldMapFile:    "--tls-map-file",
	certs.FieldClientCRL:  "--tls-client-crl",
	certs.FieldDir:        "--dir",
	certs.FieldHost:       "--host",
	certs.FieldClient:     "--client",
	certs.FieldTTL:        "--ttl",
	certs.FieldReason:     "--reason",
	certs.FieldNextUpdate: "--next-update",
	certs.FieldForce:      "--force",

	admin.FieldAddr:        "--admin",
	admin.FieldMetricsAddr: "--metrics-listen",
	fieldStale:             "--stale",

	forward.FieldListen:      "--listen",
	forward.FieldAllowRemote: "--allow-remote-listen",
}

// fieldStale is `pgwarden rules --stale`.
var fieldStale = fielderr.Field{Pkg: "main", Name: "stale"}

// clientFlagNames are connect's and probe's: a client certificate is
// --sslcert and --sslkey there, as libpq's parameters.
var clientFlagNames = with(flagNames, fielderr.Names{
	certs.FieldCert:         "--sslcert",
	certs.FieldKey:          "--sslkey",
	clienttls.FieldRootCert: "--sslrootcert",
})

// with returns base with over's names replacing its own.
func with(base, over fielderr.Names) fielderr.Names {
	out := make(fielderr.Names, len(base)+len(over))
	for f, n := range base {
		out[f] = n
	}
	for f, n := range over {
		out[f] = n
	}
	return out
}

// withFlagNames is err as the command line's user reads it, still
// matching errors.Is and errors.As.
func withFlagNames(err error) error { return fielderr.Rename(err, flagNames) }

// flagText is err's text as the command line's user reads it.
func flagText(err error) string { return fielderr.Render(err, flagNames) }
