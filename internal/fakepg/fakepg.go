package fakepg

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Negotiation is how the server answers an SSLRequest.
type Negotiation int

// Ways to answer an SSLRequest.
const (
	AnswerS            Negotiation = iota // 'S', then TLS
	AnswerN                               // 'N', then close
	AnswerSAndExtra                       // 'S' and plaintext bytes in the same write (CVE-2021-23222)
	AnswerSThenGarbage                    // 'S', then non-TLS bytes in reply to the ClientHello
	DirectTLS                             // no SSLRequest: TLS at once (ALPN per TLS config)
)

// Config scripts a Server.
type Config struct {
	Negotiation Negotiation
	// TLS is the server's TLS configuration (required unless AnswerN).
	TLS *tls.Config
	// QueryError, if set, is the SQLSTATE every query fails with.
	QueryError string
	// WaitQuery is a query text that blocks until the session is cancelled,
	// then fails with 57014, as pg_sleep does.
	WaitQuery string
}

// Cancel is a cancel request the server received.
type Cancel struct {
	ProcessID uint32
	SecretKey []byte
	From      net.Addr
}

// Session is a startup the server received.
type Session struct {
	Params   map[string]string
	ClientCN string
	From     net.Addr
	pid      uint32
}

// Server is a running fake.
type Server struct {
	cfg Config
	ln  net.Listener

	mu        sync.Mutex
	sessions  []Session
	cancels   []Cancel
	cancelled map[uint32]chan struct{}
	nextPID   uint32
	wg        sync.WaitGroup
}

// Start starts a server for tb, stopped in tb.Cleanup.
func Start(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("fakepg: %v", err)
	}
	s := &Server{cfg: cfg, ln: ln, cancelled: map[uint32]chan struct{}{}, nextPID: 1000}
	s.wg.Add(1)
	go s.serve()
	tb.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

// Addr is the server's address, 127.0.0.1:PORT.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Sessions returns the startups received so far.
func (s *Server) Sessions() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Session(nil), s.sessions...)
}

// Cancels returns the cancel requests received so far.
func (s *Server) Cancels() []Cancel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Cancel(nil), s.cancels...)
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			s.handle(c)
		}()
	}
}

func (s *Server) handle(raw net.Conn) {
	if s.cfg.Negotiation != DirectTLS {
		var req [8]byte
		if _, err := io.ReadFull(raw, req[:]); err != nil || binary.BigEndian.Uint32(req[4:]) != 80877103 {
			return
		}
		switch s.cfg.Negotiation {
		case AnswerN:
			_, _ = raw.Write([]byte{'N'})
			return
		case AnswerSAndExtra:
			_, _ = raw.Write([]byte("S\x00\x00\x00\x08injected"))
			_, _ = io.Copy(io.Discard, raw)
			return
		case AnswerSThenGarbage:
			_, _ = raw.Write([]byte{'S'})
			var hello [5]byte
			if _, err := io.ReadFull(raw, hello[:]); err != nil {
				return
			}
			_, _ = raw.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			return
		}
		if _, err := raw.Write([]byte{'S'}); err != nil {
			return
		}
	}
	tc := tls.Server(raw, s.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		return
	}
	be := pgproto3.NewBackend(tc, tc)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	switch m := msg.(type) {
	case *pgproto3.CancelRequest:
		s.mu.Lock()
		s.cancels = append(s.cancels, Cancel{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...), From: raw.RemoteAddr()})
		if ch, ok := s.cancelled[m.ProcessID]; ok {
			close(ch)
			delete(s.cancelled, m.ProcessID)
		}
		s.mu.Unlock()
	case *pgproto3.StartupMessage:
		s.session(tc, be, m)
	}
}

func (s *Server) session(tc *tls.Conn, be *pgproto3.Backend, m *pgproto3.StartupMessage) {
	sess := Session{Params: m.Parameters, From: tc.RemoteAddr()}
	if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
		sess.ClientCN = pc[0].Subject.CommonName
	}
	key := make([]byte, 4)
	_, _ = rand.Read(key)
	cancelled := make(chan struct{})
	s.mu.Lock()
	s.nextPID++
	sess.pid = s.nextPID
	s.sessions = append(s.sessions, sess)
	s.cancelled[sess.pid] = cancelled
	s.mu.Unlock()

	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "17.0 (fakepg)"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: sess.pid, SecretKey: key})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch q := msg.(type) {
		case *pgproto3.Terminate:
			return
		case *pgproto3.Query:
			switch {
			case s.cfg.WaitQuery != "" && q.String == s.cfg.WaitQuery:
				select {
				case <-cancelled:
				case <-time.After(30 * time.Second):
				}
				be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "57014", Message: "canceling statement due to user request"})
			case s.cfg.QueryError != "":
				be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: s.cfg.QueryError, Message: "fakepg: every query fails here"})
			default:
				be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("?column?"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}})
				be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte("1")}})
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		default:
			return
		}
	}
}
