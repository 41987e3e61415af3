package forward

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/netconn"
)

// maxBackendKeyData bounds a BackendKeyData body: a 4-byte pid and a key of
// at most 256 bytes (protocol 3.2, protocol.sgml "BackendKeyData").
const maxBackendKeyData = 4 + 256

// closeLinger bounds the second direction of a relay once the first has
// ended, so a peer that never closes cannot pin the session.
const closeLinger = 5 * time.Second

// session is one local connection and, once dialed, its gateway connection.
type session struct {
	mu    sync.Mutex
	local net.Conn
	gw    net.Conn
}

func (s *session) setGateway(gw net.Conn) {
	s.mu.Lock()
	s.gw = gw
	s.mu.Unlock()
}

// closeAll ends the session from outside (drain timeout).
func (s *session) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.local.Close()
	if s.gw != nil {
		_ = s.gw.Close()
	}
}

// handle runs one local connection to its end.
func (f *Forwarder) handle(local net.Conn) {
	start := time.Now()
	s := &session{local: local}
	f.track(s)
	defer func() {
		f.untrack(s)
		<-f.slots
		f.wg.Done()
	}()
	log := f.log.With(zap.Uint64("conn_id", f.nextID.Add(1)), zap.String("client", clientName(local)))
	defer func() {
		// A bug in one connection must not take the forwarder down.
		if r := recover(); r != nil {
			log.Error("connection handler panicked", zap.Any("panic", r), zap.Stack("stack"))
			_ = local.Close()
		}
	}()

	_ = local.SetDeadline(time.Now().Add(f.cfg.StartupTimeout))
	ls, err := readLocalStartup(local)
	if err != nil {
		var fe *fatalError
		if errors.As(err, &fe) {
			log.Info("local client refused", zap.String("sqlstate", fe.code), zap.String("reason", fe.message))
			sendFatal(local, fe)
			return
		}
		log.Debug("local client went away during startup", zap.Error(err))
		_ = local.Close()
		return
	}
	if ls.cancel != nil {
		f.forwardCancel(ls.cancel, log)
		_ = local.Close()
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.DialTimeout)
	gw, target, info, err := f.dialGateway(ctx)
	cancel()
	if err != nil {
		log.Warn("gateway unreachable", zap.String("gateway", f.cfg.To), zap.String("layer", clienttls.LayerOf(err)), zap.Error(err))
		sendFatal(local, gatewayFatal(f.cfg.To, err))
		return
	}
	s.setGateway(gw)
	log = log.With(zap.Stringer("gateway", target.remote))
	_ = local.SetDeadline(time.Time{})
	outcome, up, down := f.relay(s, ls.startup, target, info, log)
	log.Info("connection closed", zap.String("outcome", outcome), zap.Int64("bytes_in", up), zap.Int64("bytes_out", down),
		zap.Duration("duration", time.Since(start)))
}

// clientName names a local client for the log: its address, or for a unix
// socket (whose peers have no address) the socket it came through.
func clientName(c net.Conn) string {
	if c.LocalAddr().Network() == "unix" {
		return "unix:" + c.LocalAddr().String()
	}
	return c.RemoteAddr().String()
}

// gatewayFatal is the FATAL a local client gets when the gateway cannot be
// reached: the layer and the cause, and where to look further.
func gatewayFatal(to string, err error) *fatalError {
	return &fatalError{
		code:    codeUnableToConnect,
		message: fmt.Sprintf("pgwarden connect: cannot reach the gateway %s: %v", to, err),
		hint:    fmt.Sprintf("`pgwarden probe %s` checks the path layer by layer.", to),
	}
}

// dialGateway connects to the gateway and completes TLS. It returns the
// path taken, for cancel requests, and the handshake's details.
func (f *Forwarder) dialGateway(ctx context.Context) (*tls.Conn, cancelTarget, *clienttls.HandshakeInfo, error) {
	raw, err := f.cfg.dial(ctx, f.cfg.Network, f.cfg.To, nil)
	if err != nil {
		return nil, cancelTarget{}, nil, clienttls.ClassifyDialError(err, f.cfg.To, f.cfg.DialTimeout)
	}
	target := cancelTarget{remote: raw.RemoteAddr(), local: raw.LocalAddr()}
	conn, info, err := clienttls.Connect(ctx, raw, &f.cfg.TLS)
	if err != nil {
		_ = raw.Close()
		return nil, target, info, err
	}
	return conn, target, info, nil
}

// relay forwards the StartupMessage, follows the gateway's startup
// messages, then copies bytes both ways until either side ends. It returns
// an outcome for the log and the bytes each way.
func (f *Forwarder) relay(s *session, startup []byte, target cancelTarget, info *clienttls.HandshakeInfo, log *zap.Logger) (outcome string, up, down int64) {
	local, gw := s.local, s.gw
	defer func() {
		_ = gw.Close()
		_ = local.Close()
	}()
	_ = gw.SetWriteDeadline(time.Now().Add(f.cfg.DialTimeout))
	if _, err := gw.Write(startup); err != nil {
		sendFatal(local, &fatalError{code: codeConnectionFailure,
			message: fmt.Sprintf("pgwarden connect: the gateway %s closed the connection before the startup: %v", f.cfg.To, err)})
		return "gateway_closed", 0, 0
	}
	_ = gw.SetWriteDeadline(time.Time{})

	// Client → gateway runs from the start: the password exchange is the
	// client's to answer.
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		up, _ = io.Copy(gw, local)
		closeWrite(gw)
		setLinger(local, gw)
	}()

	unregister, wrote, err := f.followStartup(local, gw, target, &down)
	if unregister != nil {
		defer unregister()
	}
	if err != nil {
		var fe *fatalError
		switch {
		case wrote:
			// The client has the gateway's own answer (a FATAL about the
			// password, say) and the gateway hung up: nothing of ours to add.
			outcome = "ended_during_startup"
			log.Debug("session ended during startup", zap.Error(err))
		case errors.As(err, &fe):
			outcome = "startup_failed"
			sendFatal(local, fe)
			log.Warn("gateway startup failed", zap.Error(err))
		default:
			outcome = "startup_failed"
			sendFatal(local, startupFatal(f.cfg.To, err, info))
			log.Warn("gateway startup failed", zap.Error(err))
		}
		_ = gw.Close()
		_ = local.Close()
		<-upDone
		return outcome, up, down
	}
	n, _ := io.Copy(local, gw)
	down += n
	closeWrite(local)
	setLinger(local, gw)
	<-upDone
	return "closed", up, down
}

// startupFatal describes a gateway that failed before sending any message:
// a TLS alert about our certificate (TLS 1.3 servers send it after the
// client's handshake has finished), a close, or a timeout.
func startupFatal(to string, err error, info *clienttls.HandshakeInfo) *fatalError {
	if alert, ok := clienttls.AlertCode(err); ok && info != nil && info.CertRequested && clienttls.IsClientCertAlert(alert, info.CertSent != nil) {
		return gatewayFatal(to, clienttls.ClientCertRefused(err, info))
	}
	if netconn.IsTimeout(err) {
		return &fatalError{code: codeConnectionFailure, message: fmt.Sprintf("pgwarden connect: the gateway %s did not answer the startup in time", to)}
	}
	return &fatalError{code: codeConnectionFailure, message: fmt.Sprintf("pgwarden connect: the gateway %s closed the connection during the startup: %v", to, err)}
}

// followStartup copies the gateway's messages to the local client one frame
// at a time until ReadyForQuery, registering the session's BackendKeyData
// for cancel requests. Bodies other than BackendKeyData are streamed, never
// buffered, so a large one costs no memory; all of it runs under
// AuthTimeout. wrote reports whether anything reached the local client (after
// which a FATAL of our own can no longer be sent).
func (f *Forwarder) followStartup(local, gw net.Conn, target cancelTarget, down *int64) (unregister func(), wrote bool, err error) {
	deadline := time.Now().Add(f.cfg.AuthTimeout)
	_ = gw.SetReadDeadline(deadline)
	_ = local.SetWriteDeadline(deadline)
	defer func() {
		_ = gw.SetReadDeadline(time.Time{})
		_ = local.SetWriteDeadline(time.Time{})
	}()
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(gw, hdr[:]); err != nil {
			return unregister, wrote, err
		}
		typ, n := hdr[0], int64(int32(binary.BigEndian.Uint32(hdr[1:])))
		if n < 4 {
			return unregister, wrote, &fatalError{code: codeConnectionFailure,
				message: fmt.Sprintf("pgwarden connect: the gateway sent a malformed message (type %q, length %d)", typ, n)}
		}
		if _, err := local.Write(hdr[:]); err != nil {
			return unregister, true, fmt.Errorf("writing to the local client: %w", err)
		}
		wrote = true
		*down += 5
		if typ == 'K' && n-4 <= maxBackendKeyData {
			body := make([]byte, n-4)
			if _, err := io.ReadFull(gw, body); err != nil {
				return unregister, wrote, err
			}
			var bkd pgproto3.BackendKeyData
			if bkd.Decode(body) == nil && unregister == nil {
				unregister = f.cancels.register(bkd.ProcessID, bkd.SecretKey, target)
			}
			if _, err := local.Write(body); err != nil {
				return unregister, wrote, fmt.Errorf("writing to the local client: %w", err)
			}
			*down += int64(len(body))
		} else {
			c, err := io.CopyN(local, gw, n-4)
			*down += c
			if err != nil {
				return unregister, wrote, err
			}
		}
		if typ == 'Z' { // ReadyForQuery: from here on, bytes only
			return unregister, wrote, nil
		}
	}
}

// closeWrite half-closes c if it can (TCP, unix, TLS close_notify).
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// setLinger bounds how long the relay's other direction may continue once
// one has ended.
func setLinger(conns ...net.Conn) {
	dl := time.Now().Add(closeLinger)
	for _, c := range conns {
		_ = c.SetDeadline(dl)
	}
}
