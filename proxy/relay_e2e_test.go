package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/proxy"
)

// relayModes runs a test against both relays: the event loop (the default
// on Linux) and the goroutine pair (the fallback elsewhere).
func relayModes(t *testing.T, test func(t *testing.T, g *gateway)) {
	t.Run("loop", func(t *testing.T) { test(t, startGateway(t)) })
	t.Run("goroutines", func(t *testing.T) {
		g := startGateway(t)
		proxy.UseGoroutineRelay(g.server)
		test(t, g)
	})
}

// slowWriter stalls before it takes its first byte, then takes everything:
// the client stops reading for a while, as a client busy with a large result
// does.
type slowWriter struct {
	stall time.Duration
	once  sync.Once
	h     io.Writer
	n     int
}

func (w *slowWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { time.Sleep(w.stall) })
	w.n += len(p)
	return w.h.Write(p)
}

// TestRelayBackPressureToSlowClient sends a result far larger than the
// socket buffers to a client that does not read for a while: the gateway
// must stop reading postgres rather than buffer without bound (an event
// loop's queue stays within its cap), and resume without losing or
// reordering a byte.
func TestRelayBackPressureToSlowClient(t *testing.T) {
	relayModes(t, testBackPressureToSlowClient)
}

func testBackPressureToSlowClient(t *testing.T, g *gateway) {
	conn := g.connect(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	proxy.ResetRelayQueuePeak()

	const rows = 24000 // 24 MB: more than loopback's socket buffers hold
	var want bytes.Buffer
	for i := 1; i <= rows; i++ {
		fmt.Fprintf(&want, "%06d %s\n", i, strings.Repeat("x", 992))
	}
	h := sha256.New()
	w := &slowWriter{stall: 700 * time.Millisecond, h: h}
	tag, err := conn.CopyTo(ctx, w, fmt.Sprintf("COPY (SELECT lpad(i::text, 6, '0') || ' ' || repeat('x', 992) FROM generate_series(1, %d) i) TO STDOUT", rows))
	require.NoError(t, err)
	require.Equal(t, int64(rows), tag.RowsAffected())
	require.Equal(t, want.Len(), w.n)
	require.Equal(t, sha256.Sum256(want.Bytes()), [32]byte(h.Sum(nil)))
	require.LessOrEqual(t, proxy.RelayQueuePeak(), int64(proxy.RelayQueueMax))
	// The session is still usable afterwards.
	require.Equal(t, "ok", queryOne(t, conn, "SELECT 'ok'"))
}

// TestRelayBackPressureToSlowPostgres holds postgres from reading a COPY
// (its table is locked by another session) while the client keeps sending:
// the gateway must stop reading the client (an event loop's queue stays
// within its cap), then deliver every byte once postgres reads again.
func TestRelayBackPressureToSlowPostgres(t *testing.T) {
	relayModes(t, testBackPressureToSlowPostgres)
}

func testBackPressureToSlowPostgres(t *testing.T, g *gateway) {
	locker := g.connect(t, "")
	loader := g.connect(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	table := fmt.Sprintf("bp_%d", time.Now().UnixNano())
	_, err := locker.Exec(ctx, "CREATE TABLE "+table+" (line text)").ReadAll()
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = locker.Exec(context.Background(), "DROP TABLE IF EXISTS "+table).ReadAll()
	})
	_, err = locker.Exec(ctx, "BEGIN; LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE").ReadAll()
	require.NoError(t, err)

	proxy.ResetRelayQueuePeak()
	var in bytes.Buffer
	for i := 0; in.Len() < 16<<20; i++ {
		fmt.Fprintf(&in, "%08d %s\n", i, strings.Repeat(string(rune('a'+i%26)), 100+i%900))
	}
	lines := bytes.Count(in.Bytes(), []byte("\n"))

	type result struct {
		rows int64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		tag, err := loader.CopyFrom(ctx, bytes.NewReader(in.Bytes()), "COPY "+table+" FROM STDIN")
		done <- result{tag.RowsAffected(), err}
	}()
	// postgres waits for the lock and reads nothing; the COPY cannot finish.
	select {
	case r := <-done:
		t.Fatalf("COPY finished while the table was locked: %+v", r)
	case <-time.After(time.Second):
	}
	_, err = locker.Exec(ctx, "COMMIT").ReadAll()
	require.NoError(t, err)
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, int64(lines), r.rows)
	require.LessOrEqual(t, proxy.RelayQueuePeak(), int64(proxy.RelayQueueMax))

	var out bytes.Buffer
	_, err = locker.CopyTo(ctx, &out, "COPY (SELECT line FROM "+table+" ORDER BY line) TO STDOUT")
	require.NoError(t, err)
	require.Equal(t, sha256.Sum256(in.Bytes()), sha256.Sum256(out.Bytes()))
}

// TestRelayManySessionsAtOnce runs sessions concurrently, each checking
// that every answer it gets is its own.
func TestRelayManySessionsAtOnce(t *testing.T) {
	relayModes(t, testManySessionsAtOnce)
}

func testManySessionsAtOnce(t *testing.T, g *gateway) {
	const sessions, queries = 32, 40
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := range sessions {
		conn := g.connect(t, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for q := range queries {
				want := fmt.Sprintf("%d-%d-%s", s, q, strings.Repeat("z", (s*q)%3000))
				res, err := conn.Exec(ctx, fmt.Sprintf("SELECT '%s'", want)).ReadAll()
				if err != nil {
					errs <- err
					return
				}
				if got := string(res[0].Rows[0][0]); got != want {
					errs <- fmt.Errorf("session %d query %d: got %.40q, want %.40q", s, q, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
