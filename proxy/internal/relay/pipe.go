package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// Buffer sizes of the goroutine relay. An idle session blocks in Read
// holding a buffer for each direction, so idle sessions hold only the small
// one; a direction that fills it (COPY, large results) borrows a large
// buffer from a pool and gives it back as soon as traffic thins out again.
const (
	smallBufSize = 1 << 10
	largeBufSize = 32 << 10
)

var largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}

// Goroutines is the relay that runs two goroutines per session: the one
// wherever event loops are not available (off Linux, or a conn that is not
// a socket), and --relay goroutines.
func Goroutines() Relay { return pipeRelay{} }

type pipeRelay struct{}

// Wrap puts the client's conn behind a Guard.
func (pipeRelay) Wrap(raw net.Conn) net.Conn { return &guardedConn{Conn: raw} }

// Run is Pipe.
func (pipeRelay) Run(s *Session) error { return Pipe(s) }

// Stop has nothing to release.
func (pipeRelay) Stop() {}

// Alive is always nil: each session has goroutines of its own, and none
// serves other sessions.
func (pipeRelay) Alive(context.Context) error { return nil }

// Pipe copies bytes both ways until either side closes, then closes the
// other, on this goroutine and one more. Closing the session's conns (what
// Session.Close's caller does) ends it.
//
// Both halves go through the client's guard: it limits what crypto/tls
// writes on its own while reading, and, like the event loop, stops reading
// a client whose output is blocked.
func Pipe(s *Session) error {
	if !s.Start(func() func() { return nil }) {
		return nil
	}
	guard := guardOf(s.Client)
	done := make(chan struct{})
	var upErr error
	go func() {
		defer close(done)
		upErr = copyToUpstream(s, guard)
	}()

	// postgres → client, on this goroutine.
	n, err := copyHalf(clientWriter{s.Client, guard}, s.Upstream, s.Down)
	s.BytesToClient += n
	// postgres has closed (or failed): the session is over. Close the client
	// (TLS close_notify) and the upstream; that also ends the other copy.
	// The reading goroutine may hold the turn while crypto/tls's own reply
	// waits for a client that does not read: bound that wait as close_notify
	// bounds its own.
	_ = s.Raw.SetWriteDeadline(time.Now().Add(CloseGrace))
	guard.turn.Lock()
	_ = s.Client.Close()
	guard.turn.Unlock()
	_ = s.Upstream.Close()
	<-done
	// The reader's refusal is the cause when it ended the session (this
	// half then only saw closed conns); otherwise the first real error.
	real := func(e error) bool { return !netconn.IsBenign(e) && !netconn.IsTimeout(e) }
	switch {
	case errors.Is(upErr, ErrTLSAbuse):
		return upErr
	case real(err):
		return err
	case real(upErr):
		return upErr
	}
	return nil
}

// copyToUpstream is the client → postgres half. A clean end from the client
// is passed on as a half-close, which postgres treats as the end of the
// session and answers by closing; anything else closes both sides. It
// returns the half's error.
func copyToUpstream(s *Session, guard *Guard) error {
	n, err := copyHalf(s.Upstream, clientReader{s.Client, guard}, s.Up)
	s.BytesToUpstream += n
	if netconn.IsBenign(err) {
		if cw, ok := s.Upstream.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			_ = s.Upstream.SetReadDeadline(time.Now().Add(CloseGrace))
			return nil
		}
	}
	_ = s.Upstream.Close()
	if errors.Is(err, ErrTLSAbuse) {
		// No close_notify for an abusive client that does not read: it
		// could only wait for CloseGrace.
		_ = s.Raw.Close()
		return err
	}
	_ = s.Client.Close()
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
