package proxy

import (
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
// client: the session ends with errTLSAbuse (outcome "tls_abuse").
//
// The count needs nothing from crypto/tls's internals: whatever it writes
// while the relay is inside tls.Read (and, in the goroutine relay, while the
// reading goroutine holds the client's turn, see clientGuard.turn) it wrote
// on its own. A KeyUpdate that requests no update writes nothing and costs
// about what a small data record costs (a key derivation), so only
// crypto/tls's own 16-in-a-row limit applies to those.
const (
	tlsReplyRate  = 16 // records a second, sustained
	tlsReplyBurst = 16
)

var (
	// errTLSAbuse ends a session whose client made crypto/tls answer
	// post-handshake messages faster than any real client does.
	errTLSAbuse = errors.New("client requested TLS key updates faster than 16 a second (post-handshake message flood)")
	// errQueueFull ends an event-loop session whose output queue would
	// outgrow its cap (outBufMax): the back-pressure rules keep it far
	// below, so this is a gateway fault, never a reason to grow.
	errQueueFull = errors.New("relay output queue full")
)

// relayOutcome is the outcome of a session that reached the relay, for its
// log line and metrics: "ok" unless the relay ended it for a reason of its
// own.
func relayOutcome(err error) string {
	switch {
	case errors.Is(err, errTLSAbuse):
		return "tls_abuse"
	case errors.Is(err, errQueueFull):
		return "internal_error"
	}
	return "ok"
}

// clientGuard sits in the client's conn under crypto/tls (loopConn) and
// tells crypto/tls's own writes from the relay's.
type clientGuard struct {
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

// checkWrite is called for every write crypto/tls makes once the session
// is relayed; it refuses crypto/tls's own writes over the limit.
func (g *clientGuard) checkWrite() error {
	if !g.ownWrites {
		return nil
	}
	if g.replies == nil {
		g.replies = rate.NewLimiter(tlsReplyRate, tlsReplyBurst)
	}
	if !g.replies.Allow() {
		return g.fail(errTLSAbuse)
	}
	return nil
}

// fail records the first refused write and returns it.
func (g *clientGuard) fail(err error) error {
	if g.err == nil {
		g.err = fmt.Errorf("writing to the client: %w", err)
	}
	return g.err
}

// The goroutine relay's side of the guard.

// beginRead takes the turn for a tls.Read by the reading goroutine.
func (g *clientGuard) beginRead() {
	g.turn.Lock()
	g.inRead, g.ownWrites = true, true
}

// endRead gives the turn back after the tls.Read.
func (g *clientGuard) endRead() {
	g.inRead, g.ownWrites = false, false
	g.turn.Unlock()
}

// read is the socket read under crypto/tls: inside a relayed tls.Read it
// lets the writing goroutine have the turn while it waits for the client.
func (g *clientGuard) read(c net.Conn, p []byte) (int, error) {
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

// write is the socket write under crypto/tls (goroutine relay, and the
// phases before any relay).
func (g *clientGuard) write(c net.Conn, p []byte) (int, error) {
	if err := g.checkWrite(); err != nil {
		return 0, err
	}
	return c.Write(p)
}

// clientReader is the client → postgres half's source: tls.Read under the
// turn, and the end of the session if crypto/tls's own writes were refused.
type clientReader struct {
	tls   net.Conn
	guard *clientGuard
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
	tls   net.Conn
	guard *clientGuard
}

func (w clientWriter) Write(p []byte) (int, error) {
	w.guard.turn.Lock()
	defer w.guard.turn.Unlock()
	return w.tls.Write(p)
}
