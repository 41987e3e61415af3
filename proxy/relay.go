package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// This is the goroutine relay: where event loops are not available (off
// Linux, or a conn that is not a socket) each session is relayed by two
// goroutines.
//
// Buffer sizes for the raw relay. An idle session blocks in Read holding a
// buffer for each direction, so idle sessions hold only the small one; a
// direction that fills it (COPY, large results) borrows a large buffer from a
// pool and gives it back as soon as traffic thins out again.
const (
	smallBufSize = 1 << 10
	largeBufSize = 32 << 10
	// closeGrace bounds how long the other direction may go on after one
	// side has finished, so a silent peer cannot pin a goroutine.
	closeGrace = 5 * time.Second
)

var largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}

// pipe copies bytes both ways until either side closes, then closes the
// other. No message is parsed: after ReadyForQuery the gateway has nothing
// left to decide, and relayAuth left nothing buffered.
//
// Both halves go through the client's guard (clientguard.go): it limits
// what crypto/tls writes on its own while reading, and, like the event
// loop, stops reading a client whose output is blocked.
func (s *Server) pipe(sess *session, up net.Conn) {
	client := sess.tls
	guard := &clientGuard{}
	if sess.clientIO != nil {
		guard = &sess.clientIO.guard
	}
	done := make(chan struct{})
	var upErr error
	go func() {
		defer close(done)
		upErr = s.copyToUpstream(sess, up, guard)
	}()

	// postgres → client, on this goroutine.
	n, err := copyHalf(clientWriter{client, guard}, up, s.bytesDown)
	sess.bytesToClient += n
	// postgres has closed (or failed): the session is over. Close the client
	// (TLS close_notify) and the upstream; that also ends the other copy.
	// The reading goroutine may hold the turn while crypto/tls's own reply
	// waits for a client that does not read: bound that wait as close_notify
	// bounds its own.
	_ = sess.raw.SetWriteDeadline(time.Now().Add(closeGrace))
	guard.turn.Lock()
	_ = client.Close()
	guard.turn.Unlock()
	_ = up.Close()
	<-done
	// The reader's refusal is the cause when it ended the session (this
	// half then only saw closed conns); otherwise the first real error.
	real := func(e error) bool { return !isBenignNetErr(e) && !isTimeout(e) }
	switch {
	case errors.Is(upErr, errTLSAbuse):
		sess.relayErr = upErr
	case real(err):
		sess.relayErr = err
	case real(upErr):
		sess.relayErr = upErr
	}
}

// copyToUpstream is the client → postgres half. A clean end from the client
// is passed on as a half-close, which postgres treats as the end of the
// session and answers by closing; anything else closes both sides. It
// returns the half's error.
func (s *Server) copyToUpstream(sess *session, up net.Conn, guard *clientGuard) error {
	n, err := copyHalf(up, clientReader{sess.tls, guard}, s.bytesUp)
	sess.bytesToUpstream += n
	if isBenignNetErr(err) {
		if cw, ok := up.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			_ = up.SetReadDeadline(time.Now().Add(closeGrace))
			return nil
		}
	}
	_ = up.Close()
	if errors.Is(err, errTLSAbuse) {
		// No close_notify for an abusive client that does not read: it
		// could only wait for closeGrace.
		_ = sess.raw.Close()
		return err
	}
	_ = sess.tls.Close()
	return err
}

// copyHalf copies src to dst with the adaptive buffers described above and
// counts the bytes. It returns how many bytes it copied and the first error;
// io.EOF from src is returned as nil.
func copyHalf(dst io.Writer, src io.Reader, count Counter) (total int64, err error) {
	small := make([]byte, smallBufSize)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			count.Add(float64(n))
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
		switch {
		case large == nil && n == len(buf):
			large = largeBufs.Get().(*[]byte)
			buf = *large
		case large != nil && n < smallBufSize:
			largeBufs.Put(large)
			large, buf = nil, small
		}
	}
}
