package proxy

import (
	"bytes"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// TestFrameReaderStopsAtMessageBoundary feeds a Backend a password message
// followed by a pipelined query in one buffer: after the Backend has read
// the password, the query bytes must all still be unread.
func TestFrameReaderStopsAtMessageBoundary(t *testing.T) {
	pw, err := (&pgproto3.PasswordMessage{Password: "secret"}).Encode(nil)
	require.NoError(t, err)
	q, err := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	require.NoError(t, err)
	src := bytes.NewReader(append(pw, q...))

	be := pgproto3.NewBackend(newFrameReader(src), io.Discard)
	require.NoError(t, be.SetAuthType(pgproto3.AuthTypeCleartextPassword))
	msg, err := be.Receive()
	require.NoError(t, err)
	require.Equal(t, "secret", msg.(*pgproto3.PasswordMessage).Password)
	require.Equal(t, len(q), src.Len(), "the Backend read past the password message")
}

func TestFrameReaderOneByteAtATime(t *testing.T) {
	// Messages split into 1-byte reads (TCP segments of one byte) decode.
	var stream []byte
	for _, s := range []string{"a", "", "SELECT 2"} {
		b, err := (&pgproto3.Query{String: s}).Encode(nil)
		require.NoError(t, err)
		stream = append(stream, b...)
	}
	be := pgproto3.NewBackend(newFrameReader(&oneByteReader{r: bytes.NewReader(stream)}), io.Discard)
	for _, want := range []string{"a", "", "SELECT 2"} {
		msg, err := be.Receive()
		require.NoError(t, err)
		require.Equal(t, want, msg.(*pgproto3.Query).String)
	}
}

func TestFrameReaderRejectsNegativeLength(t *testing.T) {
	fr := newFrameReader(bytes.NewReader([]byte{'p', 0xff, 0xff, 0xff, 0xff, 1, 2, 3}))
	buf := make([]byte, 64)
	n, err := fr.Read(buf)
	require.Equal(t, 5, n)
	require.Error(t, err)
	// And it stays failed: no zero-length reads that a caller could spin on.
	_, err = fr.Read(buf)
	require.Error(t, err)
}

type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}
