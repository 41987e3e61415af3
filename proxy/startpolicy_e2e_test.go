package proxy_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/proxy"
)

// limitingPolicy admits only alice, to the test database, and tags her
// sessions "g-1"; it records every startup it was asked about.
type limitingPolicy struct {
	mu    sync.Mutex
	asked []string
}

func (p *limitingPolicy) AdmitStartup(remote netip.Addr, user, database string) (string, error) {
	p.mu.Lock()
	p.asked = append(p.asked, remote.String()+" "+user+" "+database)
	p.mu.Unlock()
	if user != pg.User {
		return "", errors.New(`user "` + user + `" is not permitted by the access grant for this address (oidc rule "deploy")`)
	}
	return "g-1", nil
}

func (p *limitingPolicy) Asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.asked...)
}

func withStartupPolicy(sp proxy.StartupPolicy, relay proxy.RelayMode) gatewayOption {
	return func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.StartupPolicy = sp
		c.Relay = relay
	}
}

// TestStartupPolicyRefusesBeforePostgres: a startup the policy refuses
// gets FATAL 28000 with the policy's text, and postgres never hears of it.
func TestStartupPolicyRefusesBeforePostgres(t *testing.T) {
	needPostgres(t)
	p := &limitingPolicy{}
	g := startGateway(t, withStartupPolicy(p, proxy.RelayAuto))

	before := pg.TCPConnectionsReceived()
	cfg, err := pgconn.ParseConfig(g.connString(""))
	require.NoError(t, err)
	cfg.User, cfg.Password = pg.OtherUser, pg.OtherPassword
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = pgconn.ConnectConfig(ctx, cfg)
	require.Error(t, err)
	require.Equal(t, "28000", pgtest.Code(err), "%v", err)
	require.ErrorContains(t, err, `is not permitted by the access grant for this address (oidc rule "deploy")`)
	requirePostgresSawNothing(t, before)
	require.Equal(t, []string{"127.0.0.1 " + pg.OtherUser + " " + pg.Database}, p.Asked())

	// The admitted user gets through; the policy saw the database
	// postgres will use.
	conn := g.connect(t, "")
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
}

// TestEndSessions ends tagged sessions in both relays, and leaves others.
func TestEndSessions(t *testing.T) {
	needPostgres(t)
	for _, relay := range []proxy.RelayMode{proxy.RelayGoroutines, proxy.RelayAuto} {
		t.Run(relay.String(), func(t *testing.T) {
			g := startGateway(t, withStartupPolicy(&limitingPolicy{}, relay))
			app := "end-sessions-" + relay.String()
			conn := g.connect(t, "application_name="+app)
			require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
			backends := func() string {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				n, err := pg.QueryValue(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"+app+"'")
				require.NoError(t, err)
				return n
			}
			require.Equal(t, "1", backends())

			require.Zero(t, g.server.EndSessions("g-2"), "another tag")
			require.Zero(t, g.server.EndSessions(""), "the empty tag is nobody's")
			require.Equal(t, "2", queryOne(t, conn, "SELECT 2"))

			require.Equal(t, 1, g.server.EndSessions("g-1"))
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, err := conn.Exec(ctx, "SELECT 3").ReadAll()
			require.Error(t, err, "the session outlived EndSessions")
			waitFor(t, "the session to end", func() bool { return g.server.Sessions() == 0 })
			require.Zero(t, g.server.EndSessions("g-1"), "nothing left to end")

			// Postgres saw the session end: its backend is gone.
			waitFor(t, "postgres to drop the backend", func() bool { return backends() == "0" })
		})
	}
}
