package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
)

// frameReader sits under a pgproto3 Backend or Frontend during the
// authentication phase and never returns bytes past the end of the current
// message (1-byte type, 4-byte length, body). pgproto3's chunkReader reads
// as much as its buffer holds, so without this it would swallow whatever the
// peer sent after the message it needs, such as a query pipelined behind the
// password, and those bytes would be lost when we switch to the raw relay
// (jackc/pgx#2287). With it, at ReadyForQuery nothing is buffered anywhere
// but in the connections themselves.
type frameReader struct {
	r      io.Reader
	hdr    [5]byte
	hdrN   int // header bytes seen of the current message
	remain int // body bytes left of the current message
	err    error
}

func newFrameReader(r io.Reader) *frameReader { return &frameReader{r: r} }

func (f *frameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if f.hdrN < len(f.hdr) {
		// Inside the header: hand out at most its remaining bytes.
		if want := len(f.hdr) - f.hdrN; len(p) > want {
			p = p[:want]
		}
		n, err := f.r.Read(p)
		copy(f.hdr[f.hdrN:], p[:n])
		f.hdrN += n
		if f.hdrN == len(f.hdr) {
			length := int32(binary.BigEndian.Uint32(f.hdr[1:]))
			if length < 4 {
				// pgproto3 rejects this too; stop here for good so we
				// never compute a negative body.
				f.err = fmt.Errorf("invalid message length %d", length)
				return n, f.err
			}
			f.remain = int(length) - 4
			if f.remain == 0 {
				f.hdrN = 0
			}
		}
		return n, err
	}
	if len(p) > f.remain {
		p = p[:f.remain]
	}
	n, err := f.r.Read(p)
	f.remain -= n
	if f.remain == 0 {
		f.hdrN = 0
	}
	return n, err
}

// atBoundary reports that no part of a message has been read: the reader
// sits between messages.
func (f *frameReader) atBoundary() bool { return f.hdrN == 0 && f.remain == 0 }
