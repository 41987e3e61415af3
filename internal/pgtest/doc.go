// Package pgtest starts a throwaway PostgreSQL server for tests.
//
// pgwarden is a gateway in front of PostgreSQL, and the behaviour that matters
// (SCRAM relayed end to end, a refused client never reaching the server, the
// byte relay after ReadyForQuery) can only be shown against a real server on
// real sockets. A fake speaking the protocol would agree with our reading of
// the protocol by construction, so tests here run the real thing.
//
// Start (for one test) or StartE (for TestMain) runs initdb into a fresh
// temporary directory and starts postgres on a free loopback port with
// log_connections on, a unix socket in the same directory, and fixtures:
//
//   - superuser "postgres" with a random password (SuperUser, SuperPassword);
//   - role "alice" with a random password, LOGIN, owner of database "app"
//     (User, Password, Database);
//   - role "bob" with a random password, LOGIN, no ownership
//     (OtherUser, OtherPassword).
//
// All passwords are stored as SCRAM-SHA-256 and pg_hba.conf requires
// scram-sha-256 for every TCP connection (loopback only), so a client that
// reaches the server through the gateway must really authenticate. Unix-socket
// connections are trusted: they are how the package itself (readiness, Exec,
// LogBarrier) talks to the server without touching the TCP counters.
//
// # Server binaries
//
// They are looked up in $PGBIN, then `pg_config --bindir`, then the newest
// /usr/lib/postgresql/*/bin (Debian and Ubuntu), then PATH. When none is
// found, StartE returns an error wrapping ErrNoPostgres and Start skips the
// test, unless the environment variable CI is non-empty: on CI a missing
// server is a broken machine, not a reason to pass silently, so Start fails.
//
// # Running as root
//
// initdb and postgres refuse to run as root. When the test runs as root (as
// CI containers do), both run as the OS user "postgres" if it exists, else
// "nobody", and everything they touch lives in a directory under the system
// temporary directory that this user can reach.
//
// # Using it from TestMain
//
//	var pg *pgtest.Postgres
//
//	func TestMain(m *testing.M) {
//		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
//		p, err := pgtest.StartE(ctx)
//		cancel()
//		if err != nil && (os.Getenv("CI") != "" || !errors.Is(err, pgtest.ErrNoPostgres)) {
//			fmt.Fprintln(os.Stderr, "pgtest:", err)
//			os.Exit(1)
//		}
//		pg = p // nil: tests call t.Skip
//		code := m.Run()
//		if pg != nil {
//			_ = pg.Stop()
//		}
//		os.Exit(code)
//	}
//
// # Proving the server never saw a client
//
// postgres writes "connection received" from the forked backend, so the log
// line lands some time after the TCP accept. To show that a refused client
// never reached the server, compare TCP counts around the attempt with a
// barrier in between:
//
//	n0 := pg.TCPConnectionsReceived()
//	// ... the gateway refuses a client ...
//	require.NoError(t, pg.LogBarrier(ctx)) // every earlier connection is logged by now
//	require.Equal(t, n0, pg.TCPConnectionsReceived())
//
// LogBarrier connects over the unix socket, so it changes ConnectionsReceived
// but never TCPConnectionsReceived.
package pgtest
