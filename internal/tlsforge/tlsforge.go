// Package tlsforge is a TLS 1.3 client, for tests, that requests key
// updates.
//
// Go's crypto/tls client never sends a KeyUpdate, and nothing in its API
// makes it. The tests that flood the gateway with them take over a
// crypto/tls client connection after its handshake (and, end to end, after
// pgconn logged in over it): the client's traffic secrets come from
// tls.Config.KeyLogWriter (NSS key log format, CLIENT_TRAFFIC_SECRET_0 and
// SERVER_TRAFFIC_SECRET_0), its records from a tap under it, and from there
// this file writes and reads records itself (RFC 8446 §5.2 record
// protection, §7.1-7.3 key schedule and KeyUpdate). It is the smallest
// correct TLS 1.3 record layer for the three suites crypto/tls speaks.
//
// Why not openssl s_client's K command: it needs the postgres login typed
// through s_client's stdin, and its interactive commands are recognised
// in the data; this needs no binary, and reads answers too.
package tlsforge

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeyLog collects a key log (tls.Config.KeyLogWriter).
type KeyLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (k *KeyLog) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.buf.Write(p)
}

// secret returns the last logged secret with label.
func (k *KeyLog) secret(label string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var found []byte
	sc := bufio.NewScanner(bytes.NewReader(k.buf.Bytes()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == label {
			s, err := hex.DecodeString(f[2])
			if err != nil {
				return nil, fmt.Errorf("key log %s: %w", label, err)
			}
			found = s
		}
	}
	if found == nil {
		return nil, fmt.Errorf("key log has no %s (not TLS 1.3?)", label)
	}
	return found, nil
}

// Tap is the socket under a crypto/tls client: it keeps a copy of every
// byte the client wrote and read, so that its records can be counted later.
type Tap struct {
	net.Conn
	mu            sync.Mutex
	written, read bytes.Buffer
}

func (t *Tap) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	t.mu.Lock()
	t.read.Write(p[:n])
	t.mu.Unlock()
	return n, err
}

func (t *Tap) Write(p []byte) (int, error) {
	n, err := t.Conn.Write(p)
	t.mu.Lock()
	t.written.Write(p[:n])
	t.mu.Unlock()
	return n, err
}

// Record content types (RFC 8446 §5.1).
const (
	recAlert     = 21
	recHandshake = 22
	recAppData   = 23
)

// trafficKeys protects one direction of a TLS 1.3 connection.
type trafficKeys struct {
	suite  uint16
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64
}

func newTrafficKeys(suite uint16, secret []byte) (*trafficKeys, error) {
	k := &trafficKeys{suite: suite}
	return k, k.set(secret)
}

func (k *trafficKeys) hash() func() hash.Hash {
	if k.suite == tls.TLS_AES_256_GCM_SHA384 {
		return sha512.New384
	}
	return sha256.New
}

// expandLabel is HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
func (k *trafficKeys) expandLabel(secret []byte, label string, n int) ([]byte, error) {
	full := "tls13 " + label
	info := []byte{byte(n >> 8), byte(n), byte(len(full))}
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(k.hash(), secret, string(info), n)
}

// set installs a traffic secret: new key and IV, sequence number 0.
func (k *trafficKeys) set(secret []byte) error {
	keyLen := 16
	if k.suite != tls.TLS_AES_128_GCM_SHA256 {
		keyLen = 32
	}
	key, err := k.expandLabel(secret, "key", keyLen)
	if err != nil {
		return err
	}
	iv, err := k.expandLabel(secret, "iv", 12)
	if err != nil {
		return err
	}
	switch k.suite {
	case tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384:
		block, err := aes.NewCipher(key)
		if err != nil {
			return err
		}
		if k.aead, err = cipher.NewGCM(block); err != nil {
			return err
		}
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		if k.aead, err = chacha20poly1305.New(key); err != nil {
			return err
		}
	default:
		return fmt.Errorf("cipher suite %#04x is not TLS 1.3", k.suite)
	}
	k.secret, k.iv, k.seq = secret, iv, 0
	return nil
}

// update moves to the next traffic secret (RFC 8446 §7.2).
func (k *trafficKeys) update() error {
	next, err := k.expandLabel(k.secret, "traffic upd", len(k.secret))
	if err != nil {
		return err
	}
	return k.set(next)
}

func (k *trafficKeys) nonce() []byte {
	n := bytes.Clone(k.iv)
	for i := range 8 {
		n[len(n)-1-i] ^= byte(k.seq >> (8 * i))
	}
	return n
}

// seal appends one protected record carrying typ and data to dst.
func (k *trafficKeys) seal(dst []byte, typ byte, data []byte) []byte {
	inner := append(bytes.Clone(data), typ)
	hdr := []byte{recAppData, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(hdr[3:], uint16(len(inner)+k.aead.Overhead()))
	dst = append(dst, hdr...)
	dst = k.aead.Seal(dst, k.nonce(), inner, hdr)
	k.seq++
	return dst
}

// open removes the protection of one whole record (header included) and
// returns its content type and data.
func (k *trafficKeys) open(record []byte) (byte, []byte, error) {
	inner, err := k.aead.Open(nil, k.nonce(), record[5:], record[:5])
	if err != nil {
		return 0, nil, err
	}
	k.seq++
	inner = bytes.TrimRight(inner, "\x00") // padding
	if len(inner) == 0 {
		return 0, nil, errors.New("record without content type")
	}
	return inner[len(inner)-1], inner[:len(inner)-1], nil
}

// nextRecord splits the first whole record off buf.
func nextRecord(buf []byte) (record, rest []byte, ok bool) {
	if len(buf) < 5 {
		return nil, buf, false
	}
	n := 5 + int(binary.BigEndian.Uint16(buf[3:]))
	if len(buf) < n {
		return nil, buf, false
	}
	return buf[:n], buf[n:], true
}

// skipToAppData finds where a direction's application records start: the
// first record that opens under traffic secret 0 (the handshake's own
// encrypted records do not), and opens every record after it to bring the
// sequence number up to date. A direction that has sent no application
// record yet stays at sequence number 0. It returns what follows the last
// whole record.
func (k *trafficKeys) skipToAppData(stream []byte) ([]byte, error) {
	started := false
	for {
		rec, rest, ok := nextRecord(stream)
		if !ok {
			return stream, nil
		}
		stream = rest
		if rec[0] != recAppData {
			continue // plaintext handshake and change_cipher_spec
		}
		if _, _, err := k.open(rec); err != nil {
			if started {
				return nil, fmt.Errorf("application record %d: %w", k.seq, err)
			}
			continue // a handshake record under the handshake secret
		}
		started = true
	}
}

// Forger speaks TLS 1.3 on a socket in place of the crypto/tls client
// that did the handshake there; that client must not be used again.
type Forger struct {
	raw      net.Conn
	out, in  *trafficKeys
	inbuf    []byte // server bytes not yet parsed
	appData  []byte // decrypted application data not yet returned
	batch    []byte
	Received int // KeyUpdates the server sent
}

// New takes over client (negotiated TLS 1.3, done writing and
// reading) over tap, with the secrets from keyLog.
func New(client *tls.Conn, tap *Tap, keyLog *KeyLog) (*Forger, error) {
	st := client.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("negotiated %s, not TLS 1.3", tls.VersionName(st.Version))
	}
	cs, err := keyLog.secret("CLIENT_TRAFFIC_SECRET_0")
	if err != nil {
		return nil, err
	}
	ss, err := keyLog.secret("SERVER_TRAFFIC_SECRET_0")
	if err != nil {
		return nil, err
	}
	f := &Forger{raw: tap.Conn}
	if f.out, err = newTrafficKeys(st.CipherSuite, cs); err != nil {
		return nil, err
	}
	if f.in, err = newTrafficKeys(st.CipherSuite, ss); err != nil {
		return nil, err
	}
	tap.mu.Lock()
	written, read := bytes.Clone(tap.written.Bytes()), bytes.Clone(tap.read.Bytes())
	tap.mu.Unlock()
	if _, err := f.out.skipToAppData(written); err != nil {
		return nil, fmt.Errorf("client records: %w", err)
	}
	if f.inbuf, err = f.in.skipToAppData(read); err != nil {
		return nil, fmt.Errorf("server records: %w", err)
	}
	return f, nil
}

// KeyUpdate queues a KeyUpdate (RFC 8446 §4.6.3) and moves to the next
// sending key, as its sender must.
func (f *Forger) KeyUpdate(requestUpdate bool) error {
	msg := []byte{24, 0, 0, 1, 0} // key_update, length 1, update_not_requested
	if requestUpdate {
		msg[4] = 1
	}
	f.batch = f.out.seal(f.batch, recHandshake, msg)
	return f.out.update()
}

// AppData queues application data, in records of at most 16 KiB.
func (f *Forger) AppData(p []byte) {
	for len(p) > 0 {
		n := min(len(p), 1<<14)
		f.batch = f.out.seal(f.batch, recAppData, p[:n])
		p = p[n:]
	}
}

// Flush writes the queued records, however long the socket takes.
func (f *Forger) Flush() error {
	if err := f.raw.SetWriteDeadline(time.Time{}); err != nil {
		return err
	}
	_, err := f.raw.Write(f.batch)
	f.batch = f.batch[:0]
	return err
}

// Read returns the server's application data, following its KeyUpdates.
func (f *Forger) Read(p []byte) (int, error) {
	for len(f.appData) == 0 {
		if err := f.readRecord(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.appData)
	f.appData = f.appData[n:]
	return n, nil
}

// AwaitKeyUpdates reads until the server has sent n KeyUpdates in all,
// keeping any application data for Read.
func (f *Forger) AwaitKeyUpdates(n int) error {
	for f.Received < n {
		if err := f.readRecord(); err != nil {
			return fmt.Errorf("after %d of %d KeyUpdates: %w", f.Received, n, err)
		}
	}
	return nil
}

// readRecord reads and opens one record from the server.
func (f *Forger) readRecord() error {
	rec, rest, ok := nextRecord(f.inbuf)
	for !ok {
		buf := make([]byte, 64<<10)
		n, err := f.raw.Read(buf)
		f.inbuf = append(f.inbuf, buf[:n]...)
		if err != nil && n == 0 {
			return err
		}
		rec, rest, ok = nextRecord(f.inbuf)
	}
	f.inbuf = rest
	typ, data, err := f.in.open(rec)
	if err != nil {
		return fmt.Errorf("opening server record %d: %w", f.in.seq, err)
	}
	switch typ {
	case recAppData:
		f.appData = append(f.appData, data...)
	case recHandshake:
		if len(data) != 5 || data[0] != 24 {
			return fmt.Errorf("unexpected post-handshake message % x", data)
		}
		if data[4] != 0 {
			return errors.New("the server requested a key update in its reply")
		}
		f.Received++
		return f.in.update()
	case recAlert:
		return fmt.Errorf("server sent alert % x", data)
	default:
		return fmt.Errorf("server sent record type %d", typ)
	}
	return nil
}

// SetDeadline sets the socket's deadline.
func (f *Forger) SetDeadline(t time.Time) error { return f.raw.SetDeadline(t) }
