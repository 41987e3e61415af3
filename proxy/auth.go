package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// authExchange forwards the startup packet and passes the authentication
// exchange on message by message until postgres says ReadyForQuery. pgproto3
// decodes both sides: as a Frontend toward postgres and a Backend toward the
// client, each over a frameReader so neither buffers past a message. It
// reports the outcome of the authentication (endAuth) and registers the
// session's cancel key. On success it returns the function that unregisters
// the key.
func (s *Server) authExchange(sess *session, up net.Conn, p *startupPacket) (unregister func(), err error) {
	unregister = func() {}
	defer func() {
		if err != nil {
			unregister()
		}
	}()
	if _, err := up.Write(p.raw); err != nil {
		return unregister, upstreamLost(err)
	}

	fe := pgproto3.NewFrontend(newFrameReader(up), up)
	fe.SetMaxBodyLen(defaultUpstreamMaxLen)
	fromClient := newFrameReader(sess.tls)
	be := pgproto3.NewBackend(fromClient, sess.tls)
	// Nothing a client legitimately sends before authentication is larger
	// than a SASL/GSS token; without a cap a client can announce a 1 GB
	// message and make pgproto3 allocate it.
	be.SetMaxBodyLen(defaultAuthMessageMaxLen)

	authenticated := false
	var next pgproto3.BackendMessage // already received, not yet handled
	for {
		msg := next
		next = nil
		if msg == nil {
			if msg, err = fe.Receive(); err != nil {
				return unregister, upstreamLost(err)
			}
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationGSSContinue:
			be.Send(m)
			if err := be.Flush(); err != nil {
				return unregister, s.abandoned(sess, err)
			}
			if err := s.awaitClient(sess); err != nil {
				return unregister, err
			}
			if next, err = s.gssContinue(sess, fe, be, fromClient); err != nil {
				return unregister, err
			}
		case *pgproto3.AuthenticationCleartextPassword, *pgproto3.AuthenticationMD5Password,
			*pgproto3.AuthenticationSASL, *pgproto3.AuthenticationSASLContinue,
			*pgproto3.AuthenticationGSS:
			// postgres now waits for the client's answer.
			be.Send(m)
			if err := be.Flush(); err != nil {
				return unregister, s.abandoned(sess, err)
			}
			if err := s.awaitClient(sess); err != nil {
				return unregister, err
			}
			if err := s.readAuthResponse(sess, fe, be); err != nil {
				return unregister, err
			}
		case *pgproto3.AuthenticationSASLFinal:
			// The server's last SCRAM word; AuthenticationOk follows
			// without a client reply.
			be.Send(m)
		case *pgproto3.AuthenticationOk:
			authenticated = true
			s.endAuth(sess, AuthSucceeded, "")
			be.Send(m)
		case *pgproto3.ErrorResponse:
			// postgres ends the connection after a startup error; relay it
			// as is (it is postgres's own message) and stop.
			sess.sqlstate = m.Code
			if !authenticated {
				// The outcome first: a ban this failure brings (which may
				// take a round trip to the fleet's store) is in force
				// before the client reads its answer, so a client that
				// retries at once meets it at accept.
				s.endAuth(sess, AuthFailed, m.Code)
				be.Send(m)
				_ = be.Flush()
				return unregister, silent(OutcomeAuthFailed, nil)
			}
			be.Send(m)
			_ = be.Flush()
			return unregister, silent(OutcomeStartupFailed, nil)
		case *pgproto3.BackendKeyData:
			if len(m.SecretKey) >= 4 {
				unregister = s.cfg.Cancels.register(m.ProcessID, m.SecretKey, s.cfg.Upstream)
			}
			be.Send(m)
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse, *pgproto3.NegotiateProtocolVersion:
			be.Send(m)
		case *pgproto3.ReadyForQuery:
			be.Send(m)
			if err := be.Flush(); err != nil {
				return unregister, silent(OutcomeClientGone, err)
			}
			if !authenticated {
				return unregister, refuse(OutcomeProtocolViolation, codeProtocolViolation,
					"upstream server sent ReadyForQuery before authentication", "", nil)
			}
			return unregister, nil
		default:
			return unregister, refuse(OutcomeUpstreamProtocolError, codeProtocolViolation,
				"unexpected message from the upstream server during authentication", "",
				fmt.Errorf("upstream sent %T", msg))
		}
	}
}

// readAuthResponse reads the client's answer to an authentication request
// and forwards it. SetAuthType first: 'p' is a password, a SASL initial
// response, a SASL response or a GSS token depending on the request, and
// decoding it as the wrong one breaks SCRAM (jackc/pgx#2166).
func (s *Server) readAuthResponse(sess *session, fe *pgproto3.Frontend, be *pgproto3.Backend) error {
	if err := be.SetAuthType(fe.GetAuthType()); err != nil {
		return refuse(OutcomeUpstreamProtocolError, codeProtocolViolation,
			"unsupported authentication request from the upstream server", "", err)
	}
	msg, err := be.Receive()
	return s.forwardAuthResponse(sess, fe, msg, err)
}

// forwardAuthResponse checks the client's answer to an authentication
// request (or the error reading it) and forwards it to postgres.
func (s *Server) forwardAuthResponse(sess *session, fe *pgproto3.Frontend, msg pgproto3.FrontendMessage, err error) error {
	if err != nil {
		var tooBig *pgproto3.ExceededMaxBodyLenErr
		switch {
		case errors.As(err, &tooBig):
			return refuse(OutcomeProtocolViolation, codeProtocolViolation, "authentication message too long", "", err)
		case netconn.IsTimeout(err):
			// The client let the step deadline pass with postgres's
			// backend waiting: that holds a postgres slot, and counts
			// like a failed login.
			s.endAuth(sess, AuthTimedOut, "")
			return silent(OutcomeTimeout, err)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), netconn.IsBenign(err):
			return s.abandoned(sess, err)
		default:
			return refuse(OutcomeProtocolViolation, codeProtocolViolation, "invalid authentication response", "", err)
		}
	}
	switch m := msg.(type) {
	case *pgproto3.SASLInitialResponse:
		sess.mechanism = m.AuthMechanism
	case *pgproto3.PasswordMessage, *pgproto3.SASLResponse, *pgproto3.GSSResponse:
	case *pgproto3.Terminate:
		return s.abandoned(sess, nil)
	default:
		return refuse(OutcomeProtocolViolation, codeProtocolViolation,
			"expected an authentication response", "", fmt.Errorf("client sent %T", msg))
	}
	fe.Send(msg)
	if err := fe.Flush(); err != nil {
		return upstreamLost(err)
	}
	return nil
}

// gssContinue follows an AuthenticationGSSContinue to the client. After
// it postgres either waits for the client's next GSS token or, when its
// security context is complete, goes straight on to AuthenticationOk or an
// error, and then the client sends nothing (auth.c pg_GSS_recvauth; libpq
// pg_GSS_continue). Which of the two only shows by who speaks first, so both
// sides are read at once. It returns postgres's next message.
func (s *Server) gssContinue(sess *session, fe *pgproto3.Frontend, be *pgproto3.Backend, fromClient *frameReader) (pgproto3.BackendMessage, error) {
	if err := be.SetAuthType(fe.GetAuthType()); err != nil {
		return nil, refuse(OutcomeUpstreamProtocolError, codeProtocolViolation,
			"unsupported authentication request from the upstream server", "", err)
	}
	type clientRead struct {
		msg pgproto3.FrontendMessage
		err error
	}
	type upstreamRead struct {
		msg pgproto3.BackendMessage
		err error
	}
	// Buffered: whichever read is abandoned on an error path still
	// finishes (the session's conns get closed) without blocking.
	clientc := make(chan clientRead, 1)
	upc := make(chan upstreamRead, 1)
	go func() {
		msg, err := be.Receive()
		clientc <- clientRead{msg, err}
	}()
	go func() {
		msg, err := fe.Receive()
		upc <- upstreamRead{msg, err}
	}()

	select {
	case c := <-clientc:
		// Another round: pass the token on, then postgres answers.
		if err := s.forwardAuthResponse(sess, fe, c.msg, c.err); err != nil {
			return nil, err
		}
		u := <-upc
		if u.err != nil {
			return nil, upstreamLost(u.err)
		}
		return u.msg, nil
	case u := <-upc:
		// postgres is done with GSS. Stop the client read: with the
		// deadline in the past it returns at once, and a timeout leaves
		// crypto/tls and the reader resumable.
		_ = sess.raw.SetReadDeadline(time.Now())
		c := <-clientc
		_ = sess.raw.SetReadDeadline(sess.start.Add(sess.tun.AuthTimeout))
		switch {
		case c.err == nil:
			return nil, refuse(OutcomeProtocolViolation, codeProtocolViolation,
				"unexpected message after the final GSS token", "", fmt.Errorf("client sent %T", c.msg))
		case !netconn.IsTimeout(c.err):
			return nil, s.forwardAuthResponse(sess, fe, nil, c.err)
		case !fromClient.atBoundary():
			// Part of a message was read and would be lost.
			return nil, refuse(OutcomeProtocolViolation, codeProtocolViolation,
				"unexpected data after the final GSS token", "", nil)
		}
		if u.err != nil {
			return nil, upstreamLost(u.err)
		}
		return u.msg, nil
	}
}

// abandoned records a client that left after an authentication request:
// psql does exactly that before prompting for a password, then reconnects.
// It is not a failed login.
func (s *Server) abandoned(sess *session, err error) error {
	s.endAuth(sess, AuthAbandoned, "")
	return silent(OutcomeAuthAbandoned, err)
}

// upstreamLost is postgres going away mid-startup.
func upstreamLost(err error) error {
	if netconn.IsTimeout(err) {
		return silent(OutcomeTimeout, err)
	}
	return refuse(OutcomeUpstreamUnavailable, codeConnectionFailure,
		"the upstream PostgreSQL server closed the connection unexpectedly", "", err)
}
