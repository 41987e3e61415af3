package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/proxy"
)

// TestPasswordAndMD5Methods relays the two older password exchanges: a
// cleartext PasswordMessage and an MD5 hash, each answering a different
// authentication request ('p' is decoded by the request it answers).
func TestPasswordAndMD5Methods(t *testing.T) {
	needPostgres(t)
	// md5 needs an md5-stored password; the cleartext method works with any.
	other := pgtest.Start(t,
		pgtest.WithConf("password_encryption", "md5"),
		pgtest.WithHBA("host all alice 127.0.0.1/32 md5", "host all bob 127.0.0.1/32 password"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, other.Exec(ctx, fmt.Sprintf("ALTER ROLE alice PASSWORD '%s'", other.Password)))

	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "tcp", Address: other.Addr()}
	})
	for _, tc := range []struct{ user, password, method string }{
		{other.User, other.Password, "md5"},
		{other.OtherUser, other.OtherPassword, "password"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s",
				g.port, tc.user, tc.password, g.caFile)
			conn, err := pgconn.Connect(ctx, dsn)
			require.NoError(t, err)
			defer conn.Close(ctx)
			require.Equal(t, tc.user, queryOne(t, conn, "SELECT current_user"))

			_, err = pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=wrong dbname=postgres sslmode=require", g.port, tc.user))
			require.Equal(t, "28P01", pgtest.Code(err), "err: %v", err)
		})
	}
}
