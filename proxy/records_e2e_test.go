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

// records returns the length fields of the records from the from-th on.
func (w *recordWatcher) records(from int) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.payloads[min(from, len(w.payloads)):]...)
}

// count returns how many record headers have been seen so far.
func (w *recordWatcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.payloads)
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

	before := w.count() // the handshake and the authentication exchange

	res, err := conn.Exec(ctx, "SELECT repeat('x', 100000)").ReadAll()
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("x", 100000), string(res[0].Rows[0][0]))

	// postgres sends a large result in flushes of its 8 KiB send buffer,
	// and the gateway encrypts each read from postgres in records of up to
	// 16 KiB, so the records of the result carry at least one whole flush:
	// all but the last, which carries the rest, and the first two, since
	// the goroutine relay reads postgres's first flush with its small idle
	// buffer (1 KiB) and the rest of it with its large one. Dynamic record
	// sizing would instead cap the nth application-data record of the
	// session at about n × 1.2 KB until 128 KiB have gone out: after
	// SCRAM's three records, the result's third record would carry about
	// 7 KB although postgres had sent 8 KiB.
	recs := w.records(before)
	require.Greater(t, len(recs), 4, "result records (length fields): %v", recs)
	for i, n := range recs[2 : len(recs)-1] {
		require.GreaterOrEqual(t, n, 8<<10, "record %d of the result is smaller than postgres's 8 KiB flush; result records (length fields): %v", i+2, recs)
	}
}
