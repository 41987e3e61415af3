package clienttls

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzRequestTLS feeds arbitrary server replies to an SSLRequest over
// net.Pipe: RequestTLS must return before the deadline without panicking,
// succeed only on an 'S', attribute every failure to a layer, and never
// print a server's raw control characters.
func FuzzRequestTLS(f *testing.F) {
	er, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28000", Message: "no\x1b[31m pg_hba.conf entry"}).Encode(nil)
	for _, seed := range [][]byte{
		{'S'}, {'N'}, er, {'E'}, {'E', 0, 0, 0x75, 0x31}, {'E', 0xff, 0xff, 0xff, 0xff}, {'E', 0, 0, 0, 3},
		[]byte("HTTP/1.1 400 Bad Request\r\n"), {0x15, 3, 3, 0, 2, 2, 40}, {},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		deadline := time.Now().Add(2 * time.Second)
		_ = client.SetDeadline(deadline)
		go func() {
			defer server.Close()
			_ = server.SetDeadline(deadline)
			var req [8]byte
			if _, err := io.ReadFull(server, req[:]); err != nil || binary.BigEndian.Uint32(req[4:]) != 80877103 {
				return
			}
			_, _ = server.Write(data)
		}()
		reply, err := RequestTLS(client)
		_ = client.Close()
		if time.Now().After(deadline.Add(time.Second)) {
			t.Fatal("RequestTLS overran its deadline")
		}
		if err == nil {
			if len(data) == 0 || data[0] != 'S' || reply != 'S' {
				t.Fatalf("accepted reply %q", data)
			}
			return
		}
		var le *Error
		if !errors.As(err, &le) {
			t.Fatalf("error without a layer: %v", err)
		}
		var se *ServerError
		if errors.As(err, &se) {
			for _, r := range se.Message + se.Code {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("unsanitised server text %q", se.Message)
				}
			}
		}
	})
}
