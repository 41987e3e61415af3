package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/time/rate"
)

// What crypto/tls writes on its own.
//
// Once a session is relayed, crypto/tls writes to the client in two ways:
// the relay's tls.Write (postgres's data, and close_notify at the end), and,
// inside tls.Read, records it answers with on its own. In TLS 1.3 that is
// the reply to a KeyUpdate that requests one (RFC 8446 §4.6.3: the receiver
// "MUST send a KeyUpdate of its own"; crypto/tls conn.go handleKeyUpdate),
// and in any version an alert before the read fails (a bad record, a TLS
// 1.2 renegotiation attempt), which ends the session. Nothing else is
// written during a read.
//
// crypto/tls bounds none of this by itself. It ends a connection after 16
// consecutive records that carry no application data (maxUselessRecords,
// KeyUpdates included), but a single byte of data resets that count, so a
// client that sends fifteen KeyUpdates requesting an update, then a
// one-byte record, and so on, gets a 26-byte reply record for about every
// 26 bytes it sends, for ever. Were the client never to read, those replies
// would pile up in the gateway (the event loop's queue) or hold the reader
// (the goroutine relay). The replies are counted here and limited:
// tlsReplyBurst at once, tlsReplyRate a second after that. A real client
// needs a KeyUpdate once per 2^24 or more records (RFC 8446 §5.5 and its
// implementations' key limits), so a client over the limit is not a
// client: the session ends with ErrTLSAbuse (outcome "tls_abuse").
//
// The count needs nothing from crypto/tls's internals: whatever it writes
// while the relay is inside tls.Read (and, in the goroutine relay, while the
// reading goroutine holds the client's turn, see Guard.turn) it wrote on
// its own. A KeyUpdate that requests no update writes nothing and costs
// about what a small data record costs (a key derivation), so only
// crypto/tls's own 16-in-a-row limit applies to those.
const (
	tlsReplyRate  = 16 // records a second, sustained
	tlsReplyBurst = 16
)

var (
	// ErrTLSAbuse ends a session whose client made crypto/tls answer
	// post-handshake messages faster than any real client does.
	ErrTLSAbuse = errors.New("client requested TLS key updates faster than 16 a second (post-handshake message flood)")
	// ErrQueueFull ends an event-loop session whose output queue would
	// outgrow its cap: the back-pressure rules keep it far below, so this
	// is a gateway fault, never a reason to grow.
	ErrQueueFull = errors.New("relay output queue full")
)

// Guard sits in the client's conn under crypto/tls and tells crypto/tls's
// own writes from the relay's.
type Guard struct {
	// ownWrites is set while the relay is inside tls.Read and not waiting
	// for the socket: a write now is crypto/tls's own. In the event loop
	// only the loop goroutine touches it; in the goroutine relay it is
	// written by the reading goroutine under turn, and every writer holds
	// turn.
	ownWrites bool
	// inRead is set while the reading goroutine is inside a relayed
	// tls.Read (goroutine relay only; that goroutine alone touches it).
	inRead bool
	// turn is held by whichever goroutine of the goroutine relay is inside
	// crypto/tls and may write: the writing goroutine for each tls.Write,
	// the reading goroutine for each tls.Read except while it waits in the
	// socket read. crypto/tls serializes its writes on a lock of its own
	// that the relay cannot see; turn is the same exclusion made visible,
	// so a write can be attributed. It also makes the goroutine relay do
	// what the event loop does: a client whose output is blocked is not
	// read until it drains, because the reading goroutine waits for the
	// turn.
	turn sync.Mutex
	// replies limits crypto/tls's own writes; created on the first, so an
	// ordinary session never holds one.
	replies *rate.Limiter
	// err is the first write refused (too many replies, or a full queue).
	// crypto/tls keeps a failed reply's error to itself until the next
	// tls.Write (conn.go handleKeyUpdate), so the relay checks err after
	// every tls.Read. Written and read by the reading side only.
	err error
}

// CheckWrite is called for every write crypto/tls makes; it refuses
// crypto/tls's own writes over the limit.
func (g *Guard) CheckWrite() error {
	if !g.ownWrites {
		return nil
	}
	if g.replies == nil {
		g.replies = rate.NewLimiter(tlsReplyRate, tlsReplyBurst)
	}
	if !g.replies.Allow() {
		return g.Fail(ErrTLSAbuse)
	}
	return nil
}

// Fail records the first refused write and returns it.
func (g *Guard) Fail(err error) error {
	if g.err == nil {
		g.err = fmt.Errorf("writing to the client: %w", err)
	}
	return g.err
}

// SetReplyLimit replaces the limit on crypto/tls's own writes. Tests lift
// it to see what else bounds a queue.
func (g *Guard) SetReplyLimit(l *rate.Limiter) { g.replies = l }

// ReadOwn is tls.Read by an event loop, which makes its tls.Writes
// elsewhere: whatever crypto/tls writes meanwhile is its own.
func (g *Guard) ReadOwn(c *tls.Conn, p []byte) (int, error) {
	g.ownWrites = true
	n, err := c.Read(p)
	g.ownWrites = false
	return n, err
}

// Refused is the first write the guard refused, if any. crypto/tls keeps a
// failed reply's error to itself until the next tls.Write, so a relay
// checks Refused after every tls.Read.
func (g *Guard) Refused() error { return g.err }

// The goroutine relay's side of the guard.

// beginRead takes the turn for a tls.Read by the reading goroutine.
func (g *Guard) beginRead() {
	g.turn.Lock()
	g.inRead, g.ownWrites = true, true
}

// endRead gives the turn back after the tls.Read.
func (g *Guard) endRead() {
	g.inRead, g.ownWrites = false, false
	g.turn.Unlock()
}

// Read is the socket read under crypto/tls: inside a relayed tls.Read it
// lets the writing goroutine have the turn while it waits for the client.
func (g *Guard) Read(c net.Conn, p []byte) (int, error) {
	if !g.inRead {
		return c.Read(p)
	}
	g.ownWrites = false
	g.turn.Unlock()
	n, err := c.Read(p)
	g.turn.Lock()
	g.ownWrites = true
	return n, err
}

// Write is the socket write under crypto/tls (goroutine relay, and the
// phases before any relay).
func (g *Guard) Write(c net.Conn, p []byte) (int, error) {
	if err := g.CheckWrite(); err != nil {
		return 0, err
	}
	return c.Write(p)
}

// Guarded is a conn under crypto/tls that carries a Guard: what Wrap
// returns, in both relays.
type Guarded interface {
	net.Conn
	Guard() *Guard
}

// guardedConn is the goroutine relay's wrapper: the accepted conn, its
// reads and writes passed through the guard.
type guardedConn struct {
	net.Conn
	guard Guard
}

func (c *guardedConn) Read(p []byte) (int, error)  { return c.guard.Read(c.Conn, p) }
func (c *guardedConn) Write(p []byte) (int, error) { return c.guard.Write(c.Conn, p) }
func (c *guardedConn) Guard() *Guard               { return &c.guard }

// guardOf returns the guard under client, or a fresh one for a conn no
// relay wrapped.
func guardOf(client *tls.Conn) *Guard {
	if g, ok := client.NetConn().(Guarded); ok {
		return g.Guard()
	}
	return &Guard{}
}

// clientReader is the client → postgres half's source: tls.Read under the
// turn, and the end of the session if crypto/tls's own writes were refused.
type clientReader struct {
	tls   *tls.Conn
	guard *Guard
}

func (r clientReader) Read(p []byte) (int, error) {
	r.guard.beginRead()
	n, err := r.tls.Read(p)
	r.guard.endRead()
	if r.guard.err != nil {
		return 0, r.guard.err
	}
	return n, err
}

// clientWriter is the postgres → client half's destination: tls.Write
// under the turn.
type clientWriter struct {
	tls   *tls.Conn
	guard *Guard
}

func (w clientWriter) Write(p []byte) (int, error) {
	w.guard.turn.Lock()
	defer w.guard.turn.Unlock()
	return w.tls.Write(p)
}
