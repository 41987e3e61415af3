package proxy_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/proxy"
)

// An upstream given by name passed the loopback check when the
// configuration was read; what the name resolves to at dial time is what
// counts. Here the name first resolves to 127.0.0.1, then to 0.0.0.0
// (which is not loopback, and which Linux connects to the local host, so
// without the check at dial time the session would reach postgres). The
// gateway then refuses with 08006 and postgres sees nothing.
//
// Not parallel: it swaps net.DefaultResolver, which every dial in the
// process reads.
func TestUpstreamNameCheckedAtEveryDial(t *testing.T) {
	needPostgres(t)
	_, port, err := net.SplitHostPort(pg.Addr())
	require.NoError(t, err)
	var answer atomic.Pointer[netip.Addr]
	loopback := netip.MustParseAddr("127.0.0.1")
	answer.Store(&loopback)
	saved := net.DefaultResolver
	net.DefaultResolver = &net.Resolver{PreferGo: true, Dial: fakeDNS(t, "pg.upstream.test.", &answer)}
	t.Cleanup(func() { net.DefaultResolver = saved })

	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "tcp", Address: net.JoinHostPort("pg.upstream.test", port), LoopbackOnly: true}
	})
	conn := g.connect(t, "")
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))

	elsewhere := netip.MustParseAddr("0.0.0.0")
	answer.Store(&elsewhere)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	before := pg.TCPConnectionsReceived()
	c, err := pgconn.Connect(ctx, g.connString(""))
	if err == nil {
		_ = c.Close(ctx)
	}
	require.Error(t, err, "the gateway dialed a name that no longer resolves to loopback")
	require.Equal(t, "08006", pgtest.Code(err), "%v", err)
	require.Contains(t, err.Error(), "upstream address is not loopback")
	requirePostgresSawNothing(t, before)

	// Back on loopback, the same name works again: nothing was pinned.
	answer.Store(&loopback)
	conn = g.connect(t, "")
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
}

// fakeDNS is a net.Resolver Dial that answers, over an in-memory stream, A
// queries for name with *answer and everything else with NXDOMAIN. Nothing
// leaves the process.
func fakeDNS(t *testing.T, name string, answer *atomic.Pointer[netip.Addr]) func(context.Context, string, string) (net.Conn, error) {
	return func(context.Context, string, string) (net.Conn, error) {
		client, server := net.Pipe()
		go serveFakeDNS(t, server, name, answer)
		return client, nil
	}
}

// serveFakeDNS answers length-prefixed queries (DNS over a stream, RFC 1035
// 4.2.2) until the client hangs up.
func serveFakeDNS(t *testing.T, conn net.Conn, name string, answer *atomic.Pointer[netip.Addr]) {
	defer conn.Close()
	for {
		var n [2]byte
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(conn, q); err != nil {
			return
		}
		var msg dnsmessage.Message
		if err := msg.Unpack(q); err != nil || len(msg.Questions) != 1 {
			t.Errorf("fake DNS: bad query: %v", err)
			return
		}
		question := msg.Questions[0]
		resp := dnsmessage.Message{
			Header:    dnsmessage.Header{ID: msg.ID, Response: true, Authoritative: true, RecursionAvailable: true},
			Questions: msg.Questions,
		}
		switch {
		case !strings.EqualFold(question.Name.String(), name):
			resp.RCode = dnsmessage.RCodeNameError
		case question.Type == dnsmessage.TypeA:
			resp.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 0},
				Body:   &dnsmessage.AResource{A: answer.Load().As4()},
			}}
		}
		out, err := resp.Pack()
		if err != nil {
			t.Errorf("fake DNS: packing: %v", err)
			return
		}
		if _, err := conn.Write(binary.BigEndian.AppendUint16(nil, uint16(len(out)))); err != nil {
			return
		}
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}
