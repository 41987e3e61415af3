package proxy_test

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// recordSizeBoostThreshold is crypto/tls's recordSizeBoostThreshold: with
// dynamic record sizing, the first 128 KiB a tls.Conn sends go out in
// records that start at about one TCP segment and grow by one segment per
// record.
const recordSizeBoostThreshold = 128 << 10

// recordWatcher wraps the client's raw TCP connection and parses the TLS
// record headers of everything the server sends, so a test can see how the
// stream was cut into records without decrypting it.
type recordWatcher struct {
	net.Conn

	mu       sync.Mutex
	answered bool  // the SSLRequest's one-byte answer 'S' has passed
	offset   int64 // TLS stream bytes read so far
	hdr      []byte
	skip     int     // record body bytes still to pass over
	starts   []int64 // stream offset of each record's header
	payloads []int   // each record's length field
}

func (w *recordWatcher) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	b := p[:n]
	if !w.answered && len(b) > 0 {
		// pgconn sends SSLRequest and reads 'S' before the handshake.
		w.answered = true
		b = b[1:]
	}
	for len(b) > 0 {
		if w.skip > 0 {
			k := min(w.skip, len(b))
			w.skip -= k
			w.offset += int64(k)
			b = b[k:]
			continue
		}
		// RFC 8446 §5.1: type(1) legacy_version(2) length(2).
		k := min(5-len(w.hdr), len(b))
		w.hdr = append(w.hdr, b[:k]...)
		w.offset += int64(k)
		b = b[k:]
		if len(w.hdr) == 5 {
			w.starts = append(w.starts, w.offset-5)
			w.skip = int(binary.BigEndian.Uint16(w.hdr[3:]))
			w.payloads = append(w.payloads, w.skip)
			w.hdr = w.hdr[:0]
		}
	}
	return n, err
}

// records returns the length field of every record that started within the
// first limit bytes of the stream.
func (w *recordWatcher) records(limit int64) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for i, s := range w.starts {
		if s < limit {
			out = append(out, w.payloads[i])
		}
	}
	return out
}

// TestLargeResultInFullRecords: a 100 kB value reaches the client in TLS
// records as large as the data the gateway had at hand, as it does from
// postgres's own TLS (OpenSSL writes one record per SSL_write, up to 16 KiB)
// and from stunnel. crypto/tls's default dynamic record sizing would cut the
// first 128 KiB of the session into records of about one TCP segment,
// growing slowly, which pgx's pgtype.TestDriverBytes notices.
func TestLargeResultInFullRecords(t *testing.T) {
	relayModes(t, testLargeResultInFullRecords)
}

func testLargeResultInFullRecords(t *testing.T, g *gateway) {
	cfg, err := pgconn.ParseConfig(g.connString(""))
	require.NoError(t, err)
	var w *recordWatcher
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		w = &recordWatcher{Conn: c}
		return w, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(ctx)

	res, err := conn.Exec(ctx, "SELECT repeat('x', 100000)").ReadAll()
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("x", 100000), string(res[0].Rows[0][0]))

	// What the client received in the first 128 KiB: the handshake, the
	// authentication exchange in small records, then the result. The
	// gateway reads postgres's output 32 KiB at a time or more, so with the
	// data at hand it writes full records (16 KiB of plaintext, more than
	// 16 KiB with the record overhead). Dynamic record sizing caps record n
	// at about n×1.2 KB until 128 KiB have gone out, which leaves at most
	// two full records in that span (a full one needs n ≥ 14, and 14 capped
	// records already carry over 100 KiB).
	recs := w.records(recordSizeBoostThreshold)
	full := 0
	for _, n := range recs {
		if n >= 16<<10 {
			full++
		}
	}
	require.GreaterOrEqual(t, full, 3, "TLS records in the first 128 KiB (length fields): %v", recs)
}
