package proxy

import (
	"crypto/x509"
	"net/netip"
)

// Startup admission, and ending sessions by what admitted them.
//
// The accept-time policy (package acl) decides from the address alone. Some
// admissions also limit what the source may do once it has said who it is:
// an access grant for a CI runner may admit only the role migrator to the
// database shop. A StartupPolicy applies such limits after the
// StartupMessage and before postgres is dialed, so a refused startup costs
// postgres nothing, and tags the session with what admitted it. When that
// admission ends (the grant is revoked, or expires), EndSessions ends the
// sessions carrying its tag, in whichever phase and relay they are.
//
// The policy runs under the Server's session lock, which EndSessions also
// takes. That closes the race between a startup and the end of the
// admission it relies on: either the startup was tagged first, and
// EndSessions finds it, or the admission had already ended when the policy
// looked, and the startup is refused.

// StartupPolicy admits a startup by its source, user and database. The
// proxy never learns where the answer comes from.
type StartupPolicy interface {
	// AdmitStartup returns a tag naming what admitted the session ("" for
	// nothing EndSessions will be asked to end), or an error refusing it.
	// The error's text is sent to the client as FATAL 28000, so it must be
	// safe to show an unauthenticated peer: name the rule, never a secret.
	// database is the name postgres will use (the user's when the client
	// sent none). It runs under the Server's session lock: it must be cheap
	// and must not block or call the Server.
	AdmitStartup(remote netip.Addr, user, database string) (tag string, err error)
}

// admitStartup applies the StartupPolicy and tags the session.
func (s *Server) admitStartup(sess *session) error {
	s.mu.Lock()
	tag, err := s.cfg.StartupPolicy.AdmitStartup(sess.remote, sess.user, sess.database)
	if err == nil {
		sess.tag = tag
	}
	s.mu.Unlock()
	if err != nil {
		return refuse(OutcomeNotPermitted, codeInvalidAuthorization, err.Error(), "", err)
	}
	return nil
}

// EndSessions ends every session tagged tag, whatever its phase: both its
// connections are closed (the relay's through its Close), so postgres sees
// the session end and the client its connection close. Each ends with
// outcome access_ended. It returns how many it ended.
func (s *Server) EndSessions(tag string) int {
	if tag == "" {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for sess := range s.sessions {
		if sess.tag == tag && !sess.closed {
			s.endLocked(sess, OutcomeAccessEnded)
			n++
		}
	}
	return n
}

// EndRevokedSessions ends every session whose client certificate
// revoked reports as revoked (a non-nil error), in whichever phase it is,
// with outcome certificate_revoked; call it when a new revocation list is
// in force. The check runs outside the session lock (it verifies a chain
// per session). It returns how many it ended.
func (s *Server) EndRevokedSessions(revoked func(peer []*x509.Certificate) error) int {
	type candidate struct {
		sess  *session
		certs []*x509.Certificate
	}
	var check []candidate
	s.mu.Lock()
	for sess := range s.sessions {
		if len(sess.clientCerts) > 0 && !sess.closed {
			check = append(check, candidate{sess, sess.clientCerts})
		}
	}
	s.mu.Unlock()
	n := 0
	for _, c := range check {
		if revoked(c.certs) == nil {
			continue
		}
		s.mu.Lock()
		if !c.sess.closed {
			s.endLocked(c.sess, OutcomeCertRevoked)
			n++
		}
		s.mu.Unlock()
	}
	return n
}

// endLocked closes both of sess's connections and records why.
func (s *Server) endLocked(sess *session, as Outcome) {
	sess.ended, sess.endedAs = true, as
	s.closeConnsLocked(sess)
}

// wasEnded reports whether EndSessions or EndRevokedSessions ended the
// session, and as what.
func (s *Server) wasEnded(sess *session) (bool, Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sess.ended, sess.endedAs
}
