package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// The server writes its log (log_destination=stderr) into a file through the
// descriptor handed to it at start. Every backend writes there on its own, so
// a line about a connection appears a little after the connection itself;
// the Wait* helpers and LogBarrier exist so tests do not guess a sleep.

const (
	connReceived = "connection received: "
	logPoll      = 20 * time.Millisecond
)

// Log returns the server log so far (after Stop: the log as it was then).
func (p *Postgres) Log() string {
	p.mu.Lock()
	stopped, final := p.stopped, p.finalLog
	p.mu.Unlock()
	if stopped {
		return final
	}
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	return string(b)
}

// LogSize is the log's current length, a mark for LogSince.
func (p *Postgres) LogSize() int64 {
	p.mu.Lock()
	stopped, final := p.stopped, p.finalLog
	p.mu.Unlock()
	if stopped {
		return int64(len(final))
	}
	fi, err := os.Stat(p.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogSince returns what the log gained after a LogSize mark.
func (p *Postgres) LogSince(mark int64) string {
	log := p.Log()
	if mark < 0 || mark > int64(len(log)) {
		return log
	}
	return log[mark:]
}

// LogTail returns the last n lines of the log.
func (p *Postgres) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// LogContains reports whether the log contains s now.
func (p *Postgres) LogContains(s string) bool {
	return strings.Contains(p.Log(), s)
}

// WaitLogContains polls until the log contains s or timeout passes.
func (p *Postgres) WaitLogContains(s string, timeout time.Duration) bool {
	return poll(timeout, func() bool { return p.LogContains(s) })
}

// ConnectionsReceived counts the "connection received:" lines
// (log_connections): one per connection the server accepted, over TCP or the
// unix socket, whether or not it then authenticated.
func (p *Postgres) ConnectionsReceived() int {
	return strings.Count(p.Log(), connReceived)
}

// TCPConnectionsReceived counts the connections received over TCP only, which
// is where clients coming through pgwarden arrive. The package's own
// connections (Exec, QueryValue, LogBarrier) use the unix socket and so never
// change it.
func (p *Postgres) TCPConnectionsReceived() int {
	n := 0
	for _, line := range strings.Split(p.Log(), "\n") {
		if i := strings.Index(line, connReceived); i >= 0 && !strings.HasPrefix(line[i+len(connReceived):], "host=[local]") {
			n++
		}
	}
	return n
}

// WaitConnectionsReceived polls until ConnectionsReceived is at least n or
// timeout passes, and reports whether it got there.
func (p *Postgres) WaitConnectionsReceived(n int, timeout time.Duration) bool {
	return poll(timeout, func() bool { return p.ConnectionsReceived() >= n })
}

// WaitTCPConnectionsReceived is WaitConnectionsReceived for TCP connections.
func (p *Postgres) WaitTCPConnectionsReceived(n int, timeout time.Duration) bool {
	return poll(timeout, func() bool { return p.TCPConnectionsReceived() >= n })
}

// WaitLogQuiet waits until the log has not grown for 250 ms, or timeout
// passes; it reports whether the log went quiet. It is a heuristic; prefer
// LogBarrier to show that something did not happen.
func (p *Postgres) WaitLogQuiet(timeout time.Duration) bool {
	const quiet = 250 * time.Millisecond
	size, since := p.LogSize(), time.Now()
	return poll(timeout, func() bool {
		if s := p.LogSize(); s != size {
			size, since = s, time.Now()
			return false
		}
		return time.Since(since) >= quiet
	})
}

// LogBarrier makes the server write a unique line to its log, over a fresh
// unix-socket connection, and returns once the line is there. The server
// accepts connections in order and each backend logs "connection received"
// first thing after its fork, long before a later connection gets through
// authentication and runs a statement; so once the barrier's line is in the
// log, so is the line of every connection the server accepted before the
// barrier was started. It changes ConnectionsReceived, never
// TCPConnectionsReceived.
func (p *Postgres) LogBarrier(ctx context.Context) error {
	token := fmt.Sprintf("pgtest barrier %d %s", p.barrier.Add(1), randomPassword()[:8])
	// RAISE LOG goes to the server log (log_min_messages=warning lets LOG
	// through) before the statement completes.
	if err := p.Exec(ctx, fmt.Sprintf("DO $$BEGIN RAISE LOG '%s'; END$$", token)); err != nil {
		return fmt.Errorf("pgtest: log barrier: %w", err)
	}
	for !p.LogContains(token) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: log barrier: %q not in the log: %w", token, ctx.Err())
		case <-time.After(logPoll):
		}
	}
	return nil
}

func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(logPoll)
	}
}
