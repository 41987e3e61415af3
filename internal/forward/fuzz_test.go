package forward

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzForwardNegotiate feeds arbitrary bytes as a local client's opening
// over net.Pipe: readLocalStartup must return (never hang past the
// deadline, never panic), and whatever it accepts must be a well-formed
// packet of allowed length.
func FuzzForwardNegotiate(f *testing.F) {
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "alice", "database": "app"}}).Encode(nil)
	cancel, _ := (&pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	ssl, gss := be32(8, sslRequestCode), be32(8, gssEncRequestCode)
	grease := append([]byte(nil), startup...)
	binary.BigEndian.PutUint32(grease[4:], 3<<16|9999)
	for _, seed := range [][]byte{
		startup, cancel, ssl, gss, cat(ssl, startup), cat(gss, ssl, startup), cat(ssl, ssl), cat(gss, gss),
		cat(ssl, cancel), grease, startup[:5], be32(0), be32(10000), be32(10001), be32(0xffffffff), {0x16, 3, 1},
		be32(12, cancelRequestCode, 1), be32(8, 2<<16),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		deadline := time.Now().Add(2 * time.Second)
		_ = server.SetDeadline(deadline)
		go func() {
			// The client side: send the input, read and drop any answers,
			// then hang up so a read waiting for more ends.
			_ = client.SetDeadline(deadline)
			go func() { _, _ = io.Copy(io.Discard, client) }()
			_, _ = client.Write(data)
			_ = client.Close()
		}()
		ls, err := readLocalStartup(server)
		_ = server.Close()
		if time.Now().After(deadline.Add(time.Second)) {
			t.Fatalf("readLocalStartup overran its deadline")
		}
		if err != nil {
			return
		}
		switch {
		case ls.cancel != nil:
			if len(ls.cancel.SecretKey) < 4 || len(ls.cancel.SecretKey) > 256 {
				t.Fatalf("accepted a cancel key of %d bytes", len(ls.cancel.SecretKey))
			}
		case len(ls.startup) < minStartupLen || len(ls.startup) > maxStartupLen:
			t.Fatalf("accepted a startup packet of %d bytes", len(ls.startup))
		case int(binary.BigEndian.Uint32(ls.startup)) != len(ls.startup):
			t.Fatalf("startup packet length word %d, packet %d bytes", binary.BigEndian.Uint32(ls.startup), len(ls.startup))
		case binary.BigEndian.Uint32(ls.startup[4:])>>16 != 3:
			t.Fatalf("accepted protocol %#x", binary.BigEndian.Uint32(ls.startup[4:]))
		}
	})
}
