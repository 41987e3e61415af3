package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// A user name that is not valid UTF-8 is logged with its exact bytes, the
// invalid ones as \xNN, in both the connection line and the jail's failure
// line, so the gateway's log names the role postgres's own log names. The
// JSON encoder alone would write U+FFFD, and "al\xffice" and "al\xfeice"
// would look the same.
func TestInvalidUTF8UserLoggedExactly(t *testing.T) {
	pg := pgtest.Start(t)
	e := startBanEnv(t, pg)
	user, database := "al\xffice", "d\xfeb"

	cfg, err := pgconn.ParseConfig(e.dsn("wrong-password"))
	require.NoError(t, err)
	cfg.User, cfg.Database = user, database
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.4")}}
	cfg.DialFunc = d.DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = pgconn.ConnectConfig(ctx, cfg)
	require.Error(t, err)
	require.Equal(t, "28P01", pgtest.Code(err), "%v", err)
	// postgres saw (and logged) these very bytes.
	require.True(t, pg.WaitLogContains(`password authentication failed for user "`+user+`"`, 10*time.Second), pg.LogTail(10))

	wantUser, wantDB := `al\xffice`, `d\xfeb`
	waitLog(t, e.gw, 0, "the connection line with the escaped user", func(l map[string]any) bool {
		return l["msg"] == "connection closed" && strings.HasPrefix(str(l["source"]), "127.0.0.4:")
	})
	waitLog(t, e.gw, 0, "the jail's failure line", func(l map[string]any) bool {
		return l["msg"] == "auth failure" && l["source"] == "127.0.0.4"
	})
	for _, l := range e.gw.logLines() {
		switch {
		case l["msg"] == "connection closed" && strings.HasPrefix(str(l["source"]), "127.0.0.4:"),
			l["msg"] == "auth failure" && l["source"] == "127.0.0.4":
			require.Equal(t, wantUser, l["user"], "%v", l)
			require.Equal(t, wantDB, l["database"], "%v", l)
		}
	}
}
