// Package eventloop relays authenticated sessions on event loops (Linux,
// level-triggered epoll) rather than on two goroutines each.
//
// A select through the gateway is one small message each way; with
// goroutines each costs a read, a write, a read that returns EAGAIN before
// the goroutine parks, and a trip through the scheduler to wake it. A loop
// reads once per readiness event, handles every session that became ready
// in one epoll_wait, and keeps no goroutine or buffer per idle session.
// Measured on a 2-core VM with pgbench -S through a plain TCP relay: about
// 26 µs of proxy CPU per select with goroutines, about 16 µs with one loop
// (see README, Performance).
//
// The files, in the order a session meets them:
//
//   - pool.go: the Relay (the proxy's seam), the process-wide pool of
//     loops it shares with every other Server, and the hand-off of a
//     session's sockets to a loop.
//   - loop.go: one loop: its goroutine, epoll_wait, commands from other
//     goroutines, the end of sessions.
//   - session.go: one session inside a loop: which side to read and write
//     when, back-pressure, half-close and the grace period at the end.
//   - conn.go and queue.go: the client's conn under crypto/tls, which
//     turns the non-blocking socket into what crypto/tls can use, and the
//     bounded queue of what a peer has not taken yet.
//
// The loop relies on crypto/tls treating a read error that is a net.Error
// with Temporary() true as resumable: it keeps a partial record and goes on
// at the next Read, as it does after a read deadline. Go does not promise
// this; TestTemporaryReadErrorIsResumable fails loudly if a Go release
// changes it, and --relay goroutines is the way out until the loop is
// adapted (README, Performance).
package eventloop
