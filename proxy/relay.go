package proxy

import (
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
func (s *Server) pipe(sess *session, up net.Conn) {
	client := sess.tls
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.copyToUpstream(sess, up)
	}()

	// postgres → client, on this goroutine.
	n, err := copyHalf(client, up, s.bytesDown)
	sess.bytesToClient += n
	if err != nil && !isBenignNetErr(err) && !isTimeout(err) {
		sess.relayErr = err
	}
	// postgres has closed (or failed): the session is over. Close the client
	// (TLS close_notify) and the upstream; that also ends the other copy.
	_ = client.Close()
	_ = up.Close()
	<-done
}

// copyToUpstream is the client → postgres half. A clean end from the client
// is passed on as a half-close, which postgres treats as the end of the
// session and answers by closing; anything else closes both sides.
func (s *Server) copyToUpstream(sess *session, up net.Conn) {
	n, err := copyHalf(up, sess.tls, s.bytesUp)
	sess.bytesToUpstream += n
	if isBenignNetErr(err) {
		if cw, ok := up.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			_ = up.SetReadDeadline(time.Now().Add(closeGrace))
			return
		}
	}
	_ = up.Close()
	_ = sess.tls.Close()
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
