package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The benchmarks compare the same work against postgres directly and
// through a gateway, in one run, so their ratio is what to read (the
// machine's noise hits both):
//
//	go test -run '^$' -bench . -benchtime 5s ./proxy/
func benchSelect(b *testing.B, connString string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, connString)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSelectDirectPlaintext(b *testing.B) {
	if pg == nil {
		b.Skip("no postgres")
	}
	benchSelect(b, fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", pg.Host, pg.Port, pg.User, pg.Password, pg.Database))
}

func BenchmarkSelectThroughGateway(b *testing.B) {
	g := startGateway(b)
	benchSelect(b, g.connString(""))
}

// The Connect pair measures a whole login (TCP, TLS, SCRAM, backend start)
// per iteration.
func BenchmarkConnectThroughGateway(b *testing.B) {
	g := startGateway(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		conn, err := pgconn.Connect(ctx, g.connString(""))
		if err != nil {
			b.Fatal(err)
		}
		_ = conn.Close(ctx)
	}
}

func BenchmarkConnectDirectPlaintext(b *testing.B) {
	if pg == nil {
		b.Skip("no postgres")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", pg.Host, pg.Port, pg.User, pg.Password, pg.Database)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		conn, err := pgconn.Connect(ctx, cs)
		if err != nil {
			b.Fatal(err)
		}
		_ = conn.Close(ctx)
	}
}
