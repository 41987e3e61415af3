package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// Tunables are the settings of a Server that may change while it serves
// (a SIGHUP reload): its TLS configuration, client-certificate rules,
// timeouts and pre-authentication caps. Each connection takes the set in
// force when it is accepted and keeps it to its end, so a connection is
// never judged by half of one set and half of another; the caps apply to
// connections accepted after the change.
type Tunables struct {
	TLS              *tls.Config
	Authorizer       Authorizer // nil: no client certificates
	HandshakeTimeout time.Duration
	AuthTimeout      time.Duration
	AuthStepTimeout  time.Duration
	MaxStartups      int
	MaxStartupsPerIP int
	PlaintextCancel  PlaintextCancel
}

// tunables is Config's part that Tunables replace.
func (c *Config) tunables() Tunables {
	return Tunables{
		TLS:              c.TLS,
		Authorizer:       c.Authorizer,
		HandshakeTimeout: c.HandshakeTimeout,
		AuthTimeout:      c.AuthTimeout,
		AuthStepTimeout:  c.AuthStepTimeout,
		MaxStartups:      c.MaxStartups,
		MaxStartupsPerIP: c.MaxStartupsPerIP,
		PlaintextCancel:  c.PlaintextCancel,
	}
}

// check refuses a set New would refuse.
func (t *Tunables) check() error {
	var errs []error
	if t.TLS == nil {
		errs = append(errs, errors.New("proxy: TLS config is required"))
	}
	if t.HandshakeTimeout <= 0 || t.AuthTimeout <= 0 || t.AuthStepTimeout <= 0 {
		errs = append(errs, errors.New("proxy: timeouts must be positive"))
	}
	if t.AuthTimeout < t.HandshakeTimeout {
		errs = append(errs, fmt.Errorf("proxy: auth timeout %s is shorter than handshake timeout %s", t.AuthTimeout, t.HandshakeTimeout))
	}
	if t.MaxStartups <= 0 || t.MaxStartupsPerIP <= 0 {
		errs = append(errs, errors.New("proxy: startup caps must be at least 1"))
	}
	return errors.Join(errs...)
}

// Tunables returns the set in force.
func (s *Server) Tunables() Tunables { return *s.tun.Load() }

// SetTunables replaces the set for connections accepted from now on;
// connections in progress keep theirs. An invalid set is refused whole.
func (s *Server) SetTunables(t Tunables) error {
	if err := t.check(); err != nil {
		return err
	}
	s.tun.Store(&t)
	return nil
}
