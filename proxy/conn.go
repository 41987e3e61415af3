package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/logtext"
	"github.com/pgwarden/pgwarden/internal/netaddr"
	"github.com/pgwarden/pgwarden/internal/netconn"
	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// connIDs numbers connections across all servers of the process.
var connIDs atomic.Uint64

// session is one client connection, from accept to close.
type session struct {
	tun    *Tunables // the settings in force when it was accepted
	id     uint64
	start  time.Time
	raw    net.Conn
	remote netip.Addr
	source string // the client's address as host:port, for the log line
	// balancer is the load balancer that named the client in a PROXY
	// header (host:port), for the log line; "" for a direct peer.
	balancer string
	// refusedAtAdmission: the admission policy refused the client a
	// balancer named, and counted and logged it as at accept.
	refusedAtAdmission bool

	tls        *tls.Conn // set once the handshake succeeds
	tlsMode    string    // "sslrequest" or "direct"
	tlsVersion string
	tlsCipher  string

	user, database, appName string
	mechanism               string
	sqlstate                string // the ErrorResponse postgres sent, if any

	auth            *authState // set once the authentication was admitted
	upstream        net.Conn
	relayed         *relay.Session // set once handed to the relay
	bytesToUpstream int64
	bytesToClient   int64
	relayErr        error
	panicked        error // a recovered panic in the pre-authentication phase
	closed          bool  // set under Server.mu when both sides were closed
	// tag names what admitted the session (StartupPolicy); clientCerts
	// are the certificates the client presented, recorded before the
	// Authorizer judged them (EndRevokedSessions); endedAs is the outcome
	// when EndSessions or EndRevokedSessions ended it. All under Server.mu.
	tag         string
	clientCerts []*x509.Certificate
	endedAs     Outcome
	ended       bool
}

// handle runs one connection to its end and writes its one log line.
func (s *Server) handle(ctx context.Context, raw net.Conn) {
	sess := &session{
		tun:   s.tun.Load(),
		id:    connIDs.Add(1),
		start: time.Now(),
		raw:   raw,
	}
	// Normalised as the accept-time policy saw it: the key of the
	// per-source limits and of bans. Behind a trusted load balancer it is
	// replaced by the client the balancer names (resolveSource).
	sess.remote, _ = netaddr.Peer(raw.RemoteAddr())
	sess.source = raw.RemoteAddr().String()
	s.track(sess)
	s.cfg.Metrics.SessionsActive(s.cfg.Name, 1)
	defer s.cfg.Metrics.SessionsActive(s.cfg.Name, -1)

	outcome, err := s.run(ctx, sess)
	if ended, as := s.wasEnded(sess); ended {
		outcome = as
	}
	s.finish(sess, outcome, err)
}

// run is a connection's path through the gateway, top to bottom. It returns
// the outcome for the log line and metrics.
func (s *Server) run(ctx context.Context, sess *session) (outcome Outcome, err error) {
	defer s.closeConns(sess)

	slot, ok := s.acquireStartup()
	if !ok {
		// Over the pre-authentication caps: a slow-loris or a flood.
		// Refused like a denied source: no byte, RST.
		netconn.ResetClose(sess.raw)
		return OutcomeTooManyStartups, nil
	}
	var unregister func()
	done := false
	// The TLS handshake and the authentication exchange grow a goroutine's
	// stack to tens of KiB (ECDSA, SCRAM, pgproto3), and a stack shrinks
	// only slowly after. Running them on a goroutine of their own, which
	// then exits, leaves the session's long-lived goroutines with small
	// stacks: that is most of an idle session's memory.
	onFreshStack(sess, func() {
		if outcome, done, err = s.admitSource(sess, slot); done {
			return
		}
		outcome, done, unregister, err = s.startSession(ctx, sess)
	})
	slot.release()
	if sess.panicked != nil {
		return OutcomeInternalError, sess.panicked
	}
	if done {
		return outcome, err
	}
	defer unregister()
	s.relaySession(sess)
	return relayOutcome(sess.relayErr), sess.relayErr
}

// onFreshStack runs f on a new goroutine and waits for it. A panic there
// costs this connection, not the process: the pre-authentication path faces
// the internet.
func onFreshStack(sess *session, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				sess.panicked = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		f()
	}()
	<-done
}

// admitSource learns the connection's client (resolveSource) and takes
// the client's place under the per-source startup cap.
func (s *Server) admitSource(sess *session, slot *startupSlot) (outcome Outcome, done bool, err error) {
	outcome, done, refused, err := s.resolveSource(sess)
	if done {
		sess.refusedAtAdmission = refused
		return outcome, true, err
	}
	if !slot.bindSource(sess.remote) {
		netconn.ResetClose(sess.raw)
		return OutcomeTooManyStartups, true, nil
	}
	return 0, false, nil
}

// startSession takes a connection from accept to ReadyForQuery: encryption
// negotiation, the StartupMessage, client-certificate authorization, the
// upstream dial and the authentication exchange. done reports that the
// connection ended there, with outcome; otherwise sess.upstream is ready
// for the relay and unregister forgets the session's cancel key.
func (s *Server) startSession(ctx context.Context, sess *session) (outcome Outcome, done bool, unregister func(), err error) {
	// One absolute deadline for accept → TLS → StartupMessage, so a client
	// trickling a byte at a time is still dropped on time.
	handshakeDeadline := sess.start.Add(sess.tun.HandshakeTimeout)
	_ = sess.raw.SetDeadline(handshakeDeadline)
	hctx, cancel := context.WithDeadline(ctx, handshakeDeadline)
	p, err := s.negotiate(hctx, sess)
	cancel()
	if err != nil {
		outcome, err = s.refuseClient(sess, err)
		return outcome, true, nil, err
	}
	if p.kind == kindCancelRequest {
		outcome, err = s.refuseClient(sess, s.forwardCancel(ctx, sess, p))
		return outcome, true, nil, err
	}
	sess.user, sess.database = p.user(), p.database()
	sess.appName = truncateName(p.param("application_name"))

	if sess.tun.Authorizer != nil {
		cs := sess.tls.ConnectionState()
		// Recorded first: a CRL put in force from here on either reaches
		// Authorize or finds the session in EndRevokedSessions.
		s.mu.Lock()
		sess.clientCerts = cs.PeerCertificates
		s.mu.Unlock()
		if err := sess.tun.Authorizer.Authorize(&cs, sess.user); err != nil {
			outcome, err = s.refuseClient(sess, refuse(OutcomeCertRejected, codeInvalidAuthorization, err.Error(), "", err))
			return outcome, true, nil, err
		}
	}
	if s.cfg.StartupPolicy != nil {
		if err := s.admitStartup(sess); err != nil {
			outcome, err = s.refuseClient(sess, err)
			return outcome, true, nil, err
		}
	}

	// From here the authentication deadline applies, to both sides.
	authDeadline := sess.start.Add(sess.tun.AuthTimeout)
	_ = sess.raw.SetDeadline(authDeadline)
	unregister, err = s.authenticate(ctx, sess, p, authDeadline)
	if err != nil {
		outcome, err = s.refuseClient(sess, err)
		return outcome, true, nil, err
	}
	// Authenticated: the relay has no deadlines.
	_ = sess.raw.SetDeadline(time.Time{})
	_ = sess.upstream.SetDeadline(time.Time{})
	return 0, false, unregister, nil
}

// refuseClient ends a connection that will not be relayed: a clientError is
// sent as a FATAL ErrorResponse (over TLS if we got that far), a silentError
// just closes. It returns the outcome and the cause for the log line.
func (s *Server) refuseClient(sess *session, err error) (Outcome, error) {
	var ce *clientError
	if errors.As(err, &ce) {
		var conn net.Conn = sess.raw
		if sess.tls != nil {
			conn = sess.tls
		}
		sess.sqlstate = ce.code
		abortWithError(conn, ce)
		return ce.outcome, ce.cause
	}
	var se *silentError
	if errors.As(err, &se) {
		if se.drain {
			var conn net.Conn = sess.raw
			if sess.tls != nil {
				conn = sess.tls
			}
			netconn.LingerClose(conn)
		}
		return se.outcome, se.cause
	}
	return OutcomeInternalError, err
}

// finish writes the connection's one log line and its metrics. Every string
// that came from the client goes in as a structured field (escaped by the
// encoder), never into the message, with bytes that are not UTF-8 as \xNN
// (logtext.Escape) so the log shows the name postgres saw.
func (s *Server) finish(sess *session, outcome Outcome, err error) {
	if sess.refusedAtAdmission {
		return // counted and logged by the admission policy, as at accept
	}
	d := time.Since(sess.start)
	s.cfg.Metrics.ConnectionClosed(s.cfg.Name, outcome, d)
	if outcome != OutcomeOK && !s.logs.sample(sess.remote, outcome) {
		return // counted in the sampler's summary line (logsample.go)
	}
	fields := []zap.Field{
		zap.Uint64("conn_id", sess.id),
		zap.String("source", sess.source),
		zap.String("route", s.cfg.Name),
		zap.String("outcome", outcome.String()),
		zap.Duration("duration", d),
		zap.Int64("bytes_in", sess.bytesToUpstream),
		zap.Int64("bytes_out", sess.bytesToClient),
	}
	if sess.balancer != "" {
		fields = append(fields, zap.String("balancer", sess.balancer))
	}
	if sess.user != "" {
		fields = append(fields, zap.String("user", logtext.Escape(sess.user)), zap.String("database", logtext.Escape(sess.database)))
	}
	if sess.tlsVersion != "" {
		fields = append(fields, zap.String("tls_mode", sess.tlsMode), zap.String("tls_version", sess.tlsVersion), zap.String("tls_cipher", sess.tlsCipher))
	}
	if sess.appName != "" {
		fields = append(fields, zap.String("application_name", logtext.Escape(sess.appName)))
	}
	if sess.sqlstate != "" {
		fields = append(fields, zap.String("sqlstate", sess.sqlstate))
	}
	if err != nil {
		fields = append(fields, zap.NamedError("cause", err))
	}
	if ce := s.log.Check(outcome.level(), "connection closed"); ce != nil {
		ce.Write(fields...)
	}
}
