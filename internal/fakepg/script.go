package fakepg

import (
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Step is one step of a Script, run against the connection in order.
type Step interface {
	run(c *scriptConn) error
}

// Script is postgres's side of one connection, as steps.
type Script []Step

type scriptConn struct {
	conn net.Conn
	be   *pgproto3.Backend
}

type stepFunc func(c *scriptConn) error

func (f stepFunc) run(c *scriptConn) error { return f(c) }

// ExpectStartup expects a StartupMessage with these parameters (all of
// them, and no others); nil accepts any.
func ExpectStartup(params map[string]string) Step {
	return stepFunc(func(c *scriptConn) error {
		msg, err := c.be.ReceiveStartupMessage()
		if err != nil {
			return fmt.Errorf("waiting for the startup message: %w", err)
		}
		sm, ok := msg.(*pgproto3.StartupMessage)
		if !ok {
			return fmt.Errorf("got %T, want a StartupMessage", msg)
		}
		if params != nil && !reflect.DeepEqual(sm.Parameters, params) {
			return fmt.Errorf("startup parameters %v, want %v", sm.Parameters, params)
		}
		return nil
	})
}

// Expect expects want, compared field by field.
func Expect(want pgproto3.FrontendMessage) Step {
	return stepFunc(func(c *scriptConn) error { return c.expect(want) })
}

// ExpectAuth expects want as the answer to an authentication request of
// authType (pgproto3.AuthTypeSASL, AuthTypeGSS, ...): its 'p' message is
// decoded according to the request.
func ExpectAuth(authType uint32, want pgproto3.FrontendMessage) Step {
	return stepFunc(func(c *scriptConn) error {
		if err := c.be.SetAuthType(authType); err != nil {
			return err
		}
		return c.expect(want)
	})
}

func (c *scriptConn) expect(want pgproto3.FrontendMessage) error {
	got, err := c.be.Receive()
	if err != nil {
		return fmt.Errorf("waiting for %T: %w", want, err)
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("got %#v, want %#v", got, want)
	}
	return nil
}

// Send sends msgs and flushes.
func Send(msgs ...pgproto3.BackendMessage) Step {
	return stepFunc(func(c *scriptConn) error {
		for _, m := range msgs {
			c.be.Send(m)
		}
		return c.be.Flush()
	})
}

// Pause waits d, sending nothing: a server still busy, or one whose peer
// must not get an answer from it meanwhile.
func Pause(d time.Duration) Step {
	return stepFunc(func(*scriptConn) error {
		time.Sleep(d)
		return nil
	})
}

// WaitForClose expects the peer to close without sending anything more.
func WaitForClose() Step {
	return stepFunc(func(c *scriptConn) error {
		var b [1]byte
		n, err := c.conn.Read(b[:])
		switch {
		case n > 0:
			return fmt.Errorf("got %q, want the connection closed", b[:n])
		case errors.Is(err, io.EOF):
			return nil
		}
		return fmt.Errorf("waiting for the close: %w", err)
	})
}

// ScriptServer serves one connection with a Script.
type ScriptServer struct {
	ln   net.Listener
	done chan error
}

// scriptTimeout bounds a whole script: no step waits for ever.
const scriptTimeout = 30 * time.Second

// StartScript serves the first connection to it with script, stopped in
// tb.Cleanup.
func StartScript(tb testing.TB, script Script) *ScriptServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("fakepg: %v", err)
	}
	s := &ScriptServer{ln: ln, done: make(chan error, 1)}
	go s.serve(script)
	tb.Cleanup(func() { _ = ln.Close() })
	return s
}

// Addr is the server's address, 127.0.0.1:PORT.
func (s *ScriptServer) Addr() string { return s.ln.Addr().String() }

// Wait returns the script's result: nil once every step went as scripted,
// else the first that did not. It gives up after d.
func (s *ScriptServer) Wait(d time.Duration) error {
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(d):
		return fmt.Errorf("fakepg: the script did not finish within %s", d)
	}
}

func (s *ScriptServer) serve(script Script) {
	conn, err := s.ln.Accept()
	_ = s.ln.Close()
	if err != nil {
		s.done <- fmt.Errorf("fakepg: accepting: %w", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(scriptTimeout))
	c := &scriptConn{conn: conn, be: pgproto3.NewBackend(conn, conn)}
	for i, step := range script {
		if err := step.run(c); err != nil {
			s.done <- fmt.Errorf("fakepg: step %d: %w", i+1, err)
			return
		}
	}
	s.done <- nil
}
