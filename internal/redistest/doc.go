// Package redistest runs a throwaway redis-server for tests: on 127.0.0.1,
// a free port, no persistence (--save "" --appendonly no), in a temporary
// directory, killed with the test binary if that dies.
//
//	srv := redistest.Start(t)        // stopped in t.Cleanup
//	opts := &redis.Options{Addr: srv.Addr()}
//	srv.Kill()                       // an outage: SIGKILL, data gone
//	srv.Restart(t)                   // back on the same port, empty
//
// Start skips the test when no redis-server binary is found, unless the
// environment variable CI is non-empty: there a missing server is a broken
// machine and the test fails (.ci/run installs Debian's redis-server). The
// binary is $REDIS_SERVER if set, else redis-server on PATH, else
// /usr/bin/redis-server or /usr/sbin/redis-server.
package redistest
