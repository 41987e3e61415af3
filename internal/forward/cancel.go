package forward

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/clienttls"
)

// cancelTarget is where a session's connection went: the gateway address it
// resolved to and the local address it left from. A cancel must take the
// same path, or a gateway behind DNS (several instances) would receive it on
// an instance that does not know the key, and an allowlist keyed on the
// source could refuse it (neon #5839; pgx through cloud-sql-proxy, #1517).
type cancelTarget struct {
	remote net.Addr
	local  net.Addr
}

// cancelRegistry maps the BackendKeyData of the sessions being relayed to
// their cancelTarget. It holds at most one entry per live session, and
// sessions are capped by Config.MaxConns.
type cancelRegistry struct {
	mu       sync.Mutex
	sessions map[uint32][]cancelEntry
}

type cancelEntry struct {
	key    []byte
	target cancelTarget
}

func newCancelRegistry() *cancelRegistry {
	return &cancelRegistry{sessions: make(map[uint32][]cancelEntry)}
}

// register records a session's key and returns the function that forgets it.
func (r *cancelRegistry) register(pid uint32, key []byte, t cancelTarget) (unregister func()) {
	k := append([]byte{0}, key...) // never empty, so &k[0] identifies the entry
	r.mu.Lock()
	r.sessions[pid] = append(r.sessions[pid], cancelEntry{key: k, target: t})
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		entries := r.sessions[pid]
		for i := range entries {
			if &entries[i].key[0] == &k[0] {
				entries = append(entries[:i], entries[i+1:]...)
				break
			}
		}
		if len(entries) == 0 {
			delete(r.sessions, pid)
		} else {
			r.sessions[pid] = entries
		}
	}
}

// lookup finds the target of the live session with this pid and key. Keys
// are compared in constant time, so a local process cannot find a key byte
// by byte through us.
func (r *cancelRegistry) lookup(pid uint32, key []byte) (cancelTarget, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.sessions[pid] {
		if subtle.ConstantTimeCompare(e.key[1:], key) == 1 {
			return e.target, true
		}
	}
	return cancelTarget{}, false
}

// forwardCancel carries a local CancelRequest to the gateway over a new TLS
// connection along the session's own path, and returns once the gateway has
// closed that connection (libpq's PQcancel waits for that close, so psql's
// Ctrl-C returns when the cancel has been delivered). A key of no session
// this forwarder relays is dropped: the gateway would drop it too, and we
// are no relay for guesses.
func (f *Forwarder) forwardCancel(cr *pgproto3.CancelRequest, log *zap.Logger) {
	t, ok := f.cancels.lookup(cr.ProcessID, cr.SecretKey)
	if !ok {
		log.Info("cancel request for no session relayed here: dropped")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.DialTimeout)
	defer cancel()
	if err := f.sendCancel(ctx, cr, t); err != nil {
		log.Warn("forwarding cancel request failed", zap.Stringer("gateway", t.remote), zap.Error(err))
		return
	}
	log.Info("cancel request forwarded", zap.Stringer("gateway", t.remote))
}

func (f *Forwarder) sendCancel(ctx context.Context, cr *pgproto3.CancelRequest, t cancelTarget) error {
	// Port 0: the same local IP, a fresh port.
	var local net.Addr
	if ta, ok := t.local.(*net.TCPAddr); ok {
		local = &net.TCPAddr{IP: ta.IP, Zone: ta.Zone}
	}
	raw, err := f.cfg.dial(ctx, f.cfg.Network, t.remote.String(), local)
	if err != nil {
		return fmt.Errorf("dialing %s: %w", t.remote, err)
	}
	defer raw.Close()
	conn, _, err := clienttls.Connect(ctx, raw, &f.cfg.TLS)
	if err != nil {
		return err
	}
	defer conn.Close()
	pkt, err := cr.Encode(nil)
	if err != nil {
		return fmt.Errorf("encoding the cancel request: %w", err)
	}
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	if _, err := conn.Write(pkt); err != nil {
		return fmt.Errorf("sending the cancel request: %w", err)
	}
	// The gateway answers nothing and closes; wait for that, bounded.
	_, _ = io.CopyN(io.Discard, conn, 1<<10)
	return nil
}
