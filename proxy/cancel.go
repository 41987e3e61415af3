package proxy

import (
	"context"
	"crypto/subtle"
	"sync"
	"time"
)

// CancelRegistry knows the (pid, secret key) pairs of the sessions this
// process is relaying right now, and where their upstream is. A cancel
// request is forwarded only when it names one of them: anything else is a
// guess, and postgres should never see guesses (protocol.sgml, "Canceling
// Requests in Progress": the key exists so that only the session's own
// client can cancel it).
type CancelRegistry struct {
	mu       sync.Mutex
	sessions map[uint32][]cancelTarget
}

type cancelTarget struct {
	key      []byte
	upstream Upstream
}

// NewCancelRegistry returns an empty registry.
func NewCancelRegistry() *CancelRegistry {
	return &CancelRegistry{sessions: make(map[uint32][]cancelTarget)}
}

// register records a session's BackendKeyData and returns the function that
// forgets it when the session ends.
func (r *CancelRegistry) register(pid uint32, key []byte, up Upstream) (unregister func()) {
	k := append([]byte(nil), key...)
	r.mu.Lock()
	r.sessions[pid] = append(r.sessions[pid], cancelTarget{key: k, upstream: up})
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		targets := r.sessions[pid]
		for i, t := range targets {
			if &t.key[0] == &k[0] {
				targets = append(targets[:i], targets[i+1:]...)
				break
			}
		}
		if len(targets) == 0 {
			delete(r.sessions, pid)
		} else {
			r.sessions[pid] = targets
		}
	}
}

// lookup returns the upstream of the live session with this pid and key.
// Keys are compared in constant time: a timing oracle on the key would let a
// peer find it byte by byte.
func (r *CancelRegistry) lookup(pid uint32, key []byte) (Upstream, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.sessions[pid] {
		if len(t.key) == len(key) && subtle.ConstantTimeCompare(t.key, key) == 1 {
			return t.upstream, true
		}
	}
	return Upstream{}, false
}

// Len reports how many sessions are registered.
func (r *CancelRegistry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ts := range r.sessions {
		n += len(ts)
	}
	return n
}

// forwardCancel handles a CancelRequest: it is forwarded to its session's
// postgres only when the route's rules for cancels are met (below), the
// source is within its cancel rate, and (pid, key) names a live session.
// The client never gets a reply (postgres sends none either), so the
// outcome is only logged. The secret key is never logged.
func (s *Server) forwardCancel(ctx context.Context, sess *session, p *startupPacket) error {
	if err := s.cancelAdmitted(sess); err != nil {
		s.cfg.Metrics.CancelRequest(false)
		return err
	}
	// The key is looked up before the rate is applied, so that a guess
	// over the rate still counts toward the source's ban; it is then
	// dropped whatever the key, so a right guess over the rate cancels
	// nothing either.
	up, known := s.cfg.Cancels.lookup(p.cancelPID, p.cancelKey)
	allowed := s.cfg.CancelLimiter.observe(sess.remote, known)
	switch {
	case !allowed:
		s.cfg.Metrics.CancelRequest(false)
		return silent(OutcomeCancelRateLimited, nil)
	case !known:
		s.cfg.Metrics.CancelRequest(false)
		return silent(OutcomeCancelUnknown, nil)
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	conn, err := up.Dial(dctx)
	if err != nil {
		s.cfg.Metrics.CancelRequest(false)
		return silent(OutcomeCancelUpstreamUnavailable, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.DialTimeout))
	if _, err := conn.Write(p.raw); err != nil {
		s.cfg.Metrics.CancelRequest(false)
		return silent(OutcomeCancelUpstreamUnavailable, err)
	}
	s.cfg.Metrics.CancelRequest(true)
	return silent(OutcomeCancelForwarded, nil)
}

// cancelAdmitted applies the route's rules for cancels: a plaintext cancel
// only if PlaintextCancel allows it (by default, not on a route that checks
// client certificates: it would carry none), and over TLS on such a route
// only with a client certificate that Authorizer.VerifyPeer accepts. A
// cancel names no role, so the role rule does not apply.
func (s *Server) cancelAdmitted(sess *session) error {
	if sess.tls == nil {
		switch sess.tun.PlaintextCancel {
		case PlaintextCancelAllow:
			return nil
		case PlaintextCancelDeny:
			return silent(OutcomeCancelPlaintextRefused, nil)
		}
		if sess.tun.Authorizer != nil {
			return silent(OutcomeCancelPlaintextRefused, nil)
		}
		return nil
	}
	if sess.tun.Authorizer != nil {
		cs := sess.tls.ConnectionState()
		if err := sess.tun.Authorizer.VerifyPeer(&cs); err != nil {
			return silent(OutcomeCancelCertRejected, err)
		}
	}
	return nil
}
