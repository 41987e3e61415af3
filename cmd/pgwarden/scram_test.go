package main

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// scramClient drives a SCRAM-SHA-256 login by hand through the gateway, so
// a test can stop between the rounds: an attacker takes many connections to
// the last round and then sends every proof at once. pgconn cannot pause
// there.
type scramClient struct {
	conn        net.Conn
	fe          *pgproto3.Frontend
	clientFirst string // client-first-message-bare
	serverFirst string
}

// dialTLS connects from source to the gateway at addr, negotiates TLS with
// SSLRequest and sends a StartupMessage for user and database. Every read
// and write is bounded by deadline.
func dialTLS(addr, caFile, source, user, database string, deadline time.Time) (*scramClient, error) {
	d := net.Dialer{Deadline: deadline, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = raw.SetDeadline(deadline)
	if _, err := raw.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}); err != nil { // SSLRequest
		raw.Close()
		return nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(raw, b[:]); err != nil || b[0] != 'S' {
		raw.Close()
		return nil, fmt.Errorf("SSLRequest answered %q: %v", b[:], err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		raw.Close()
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	conn := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	var body []byte
	for _, s := range []string{"user", user, "database", database, ""} {
		body = append(append(body, s...), 0)
	}
	pkt := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	pkt = binary.BigEndian.AppendUint32(pkt, 3<<16)
	if _, err := conn.Write(append(pkt, body...)); err != nil {
		conn.Close()
		return nil, err
	}
	return &scramClient{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}, nil
}

// pgError is an ErrorResponse as an error.
type pgError struct{ *pgproto3.ErrorResponse }

func (e pgError) Error() string { return e.Code + ": " + e.Message }

// sqlstate returns the SQLSTATE of an ErrorResponse error, else "".
func sqlstate(err error) string {
	var pe pgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// receive reads one message; an ErrorResponse becomes a pgError.
func (c *scramClient) receive() (pgproto3.BackendMessage, error) {
	msg, err := c.fe.Receive()
	if err != nil {
		return nil, err
	}
	if er, ok := msg.(*pgproto3.ErrorResponse); ok {
		return nil, pgError{er}
	}
	return msg, nil
}

// prompt waits for postgres's AuthenticationSASL: the point where postgres
// waits for the client.
func (c *scramClient) prompt() error {
	msg, err := c.receive()
	if err != nil {
		return err
	}
	if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		return fmt.Errorf("want AuthenticationSASL, got %T", msg)
	}
	return nil
}

// firstRound answers the prompt with a client-first message and reads the
// server-first message: after it, postgres waits for the proof.
func (c *scramClient) firstRound() error {
	nonce := make([]byte, 18)
	_, _ = rand.Read(nonce)
	c.clientFirst = "n=,r=" + base64.RawStdEncoding.EncodeToString(nonce)
	c.fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,," + c.clientFirst)})
	if err := c.fe.Flush(); err != nil {
		return err
	}
	msg, err := c.receive()
	if err != nil {
		return err
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		return fmt.Errorf("want AuthenticationSASLContinue, got %T", msg)
	}
	c.serverFirst = string(cont.Data)
	return nil
}

// prove sends the proof for password and reads the verdict: nil once
// postgres says AuthenticationOk, else the ErrorResponse or the read error.
func (c *scramClient) prove(password string) error {
	attrs := map[string]string{}
	for _, kv := range strings.Split(c.serverFirst, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			attrs[k] = v
		}
	}
	salt, err := base64.StdEncoding.DecodeString(attrs["s"])
	if err != nil {
		return err
	}
	iters, err := strconv.Atoi(attrs["i"])
	if err != nil {
		return err
	}
	withoutProof := "c=biws,r=" + attrs["r"]
	authMessage := c.clientFirst + "," + c.serverFirst + "," + withoutProof
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, 32)
	if err != nil {
		return err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	signature := hmacSHA256(storedKey[:], authMessage)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ signature[i]
	}
	c.fe.Send(&pgproto3.SASLResponse{Data: []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof))})
	if err := c.fe.Flush(); err != nil {
		return err
	}
	for {
		msg, err := c.receive()
		if err != nil {
			return err
		}
		if _, ok := msg.(*pgproto3.AuthenticationOk); ok {
			return nil
		}
	}
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}
