package proxy

import (
	"fmt"

	"go.uber.org/zap/zapcore"
)

// Outcome is how a connection ended: the "outcome" field of its log line
// and the outcome label of pgwarden_connections_total. Every outcome is a
// row of the table below, so a new one cannot be added without saying
// whether it is a refusal (pgwarden_rejections_total) and how loudly it is
// logged.
type Outcome uint8

// The outcomes, in the order a connection can meet them.
const (
	// Admission before anything is read.
	OutcomeTooManyStartups Outcome = iota
	// A trusted load balancer's PROXY header.
	OutcomeBadProxyHeader
	OutcomeHealthCheck
	// Encryption negotiation and the startup packet.
	OutcomeClientGone
	OutcomeTimeout
	OutcomeTLSFailed
	OutcomeTLSRequired
	OutcomeBadStartupLength
	OutcomeBadStartup
	OutcomeBadProtocol
	OutcomeProtocolViolation
	// Cancel requests (they end the connection that carries them).
	OutcomeCancelMalformed
	OutcomeCancelPlaintextRefused
	OutcomeCancelCertRejected
	OutcomeCancelRateLimited
	OutcomeCancelUnknown
	OutcomeCancelUpstreamUnavailable
	OutcomeCancelForwarded
	// Authentication: admission, the dial, the exchange.
	OutcomeCertRejected
	OutcomeNotPermitted
	OutcomeBanned
	OutcomeAuthThrottled
	OutcomeTooManyUpstreamStartups
	OutcomeUpstreamUnavailable
	OutcomeUpstreamProtocolError
	OutcomeAuthFailed
	OutcomeAuthAbandoned
	OutcomeStartupFailed
	// The relayed session.
	OutcomeOK
	OutcomeTLSAbuse
	OutcomeInternalError
	// Ended from outside, in any phase (Server.EndSessions,
	// Server.EndRevokedSessions).
	OutcomeAccessEnded
	OutcomeCertRevoked

	numOutcomes
)

// outcomes is the one table of outcomes. The labels are part of the
// interface (dashboards, alerts and log queries match them): renaming one
// is a breaking change.
//
// refusal marks the gateway turning a connection away by policy, counted in
// pgwarden_rejections_total next to the accept-time reasons. Faults
// (upstream_*, internal_error), client behaviour that is not a refusal
// (client_gone, timeout, auth_abandoned, a malformed or unknown cancel) and
// failed logins (counted by pgwarden_auth_total) are not refusals.
var outcomes = [numOutcomes]struct {
	label   string
	refusal bool
	level   zapcore.Level // of the "connection closed" line
}{
	OutcomeTooManyStartups:           {"too_many_startups", true, zapcore.InfoLevel},        // over Config.MaxStartups or MaxStartupsPerIP: RST
	OutcomeBadProxyHeader:            {"bad_proxy_header", true, zapcore.InfoLevel},         // a trusted balancer sent no valid PROXY header in time
	OutcomeHealthCheck:               {"health_check", false, zapcore.DebugLevel},           // a trusted balancer named no client (LOCAL, UNKNOWN, or a close before any byte)
	OutcomeClientGone:                {"client_gone", false, zapcore.InfoLevel},             // closed or reset before authentication
	OutcomeTimeout:                   {"timeout", false, zapcore.InfoLevel},                 // a handshake or authentication deadline passed
	OutcomeTLSFailed:                 {"tls_failed", false, zapcore.InfoLevel},              // the TLS handshake failed
	OutcomeTLSRequired:               {"tls_required", true, zapcore.InfoLevel},             // plaintext StartupMessage: 28000
	OutcomeBadStartupLength:          {"bad_startup_length", true, zapcore.InfoLevel},       // a first packet's length word out of range, or cut short: closed without a reply, as postgres does
	OutcomeBadStartup:                {"bad_startup", true, zapcore.InfoLevel},              // malformed StartupMessage
	OutcomeBadProtocol:               {"bad_protocol", true, zapcore.InfoLevel},             // unsupported protocol version
	OutcomeProtocolViolation:         {"protocol_violation", true, zapcore.InfoLevel},       // e.g. a second SSLRequest
	OutcomeCancelMalformed:           {"cancel_malformed", false, zapcore.InfoLevel},        // a cancel request of an impossible length
	OutcomeCancelPlaintextRefused:    {"cancel_plaintext_refused", true, zapcore.InfoLevel}, // PlaintextCancelDeny (or Auto with an Authorizer)
	OutcomeCancelCertRejected:        {"cancel_cert_rejected", true, zapcore.InfoLevel},     // a TLS cancel without an acceptable client certificate
	OutcomeCancelRateLimited:         {"cancel_rate_limited", true, zapcore.InfoLevel},      // over the source's CancelLimits rate
	OutcomeCancelUnknown:             {"cancel_unknown", false, zapcore.InfoLevel},          // a key no live session has: a guess, counted toward a ban
	OutcomeCancelUpstreamUnavailable: {"cancel_upstream_unavailable", false, zapcore.InfoLevel},
	OutcomeCancelForwarded:           {"cancel_forwarded", false, zapcore.InfoLevel},
	OutcomeCertRejected:              {"cert_rejected", true, zapcore.InfoLevel},              // client certificate not allowed for the role
	OutcomeNotPermitted:              {"not_permitted", true, zapcore.InfoLevel},              // the StartupPolicy refused this user or database (an access grant's limits)
	OutcomeBanned:                    {"banned", true, zapcore.InfoLevel},                     // banned after accept: refused, or cut short before AuthenticationOk
	OutcomeAuthThrottled:             {"auth_throttled", true, zapcore.InfoLevel},             // no authentication slot of the source freed before the deadline
	OutcomeTooManyUpstreamStartups:   {"too_many_upstream_startups", true, zapcore.InfoLevel}, // over the UpstreamLimiter's cap until the deadline
	OutcomeUpstreamUnavailable:       {"upstream_unavailable", false, zapcore.WarnLevel},      // postgres down or gone: 08006
	OutcomeUpstreamProtocolError:     {"upstream_protocol_error", false, zapcore.InfoLevel},   // postgres sent what the authentication exchange does not expect
	OutcomeAuthFailed:                {"auth_failed", false, zapcore.InfoLevel},               // postgres refused the login
	OutcomeAuthAbandoned:             {"auth_abandoned", false, zapcore.InfoLevel},            // the client left at an authentication request
	OutcomeStartupFailed:             {"startup_failed", false, zapcore.InfoLevel},            // an error after AuthenticationOk (no such database)
	OutcomeOK:                        {"ok", false, zapcore.InfoLevel},                        // a session, relayed to its end
	OutcomeTLSAbuse:                  {"tls_abuse", true, zapcore.WarnLevel},                  // key updates faster than any real client asks
	OutcomeInternalError:             {"internal_error", false, zapcore.ErrorLevel},           // a gateway fault
	OutcomeAccessEnded:               {"access_ended", false, zapcore.InfoLevel},              // what admitted it ended (an access grant revoked or expired): EndSessions
	OutcomeCertRevoked:               {"certificate_revoked", false, zapcore.InfoLevel},       // a revocation list put in force revokes its client certificate: EndRevokedSessions
}

// String is the outcome's label.
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomes[o].label
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Refusal reports an outcome that is the gateway refusing a connection by
// policy (pgwarden_rejections_total).
func (o Outcome) Refusal() bool { return o < numOutcomes && outcomes[o].refusal }

// level is the level of the connection's log line.
func (o Outcome) level() zapcore.Level {
	if o < numOutcomes {
		return outcomes[o].level
	}
	return zapcore.ErrorLevel
}

// Outcomes lists every outcome, for metrics that pre-register their labels.
func Outcomes() []Outcome {
	all := make([]Outcome, numOutcomes)
	for i := range all {
		all[i] = Outcome(i)
	}
	return all
}
