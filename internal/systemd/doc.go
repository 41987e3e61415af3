// Package systemd lets `pgwarden serve` behave as a systemd service
// expects (sd_notify(3), sd_listen_fds(3)), through go-systemd:
//
//   - Notifier tells the service manager READY=1 once every listener is
//     bound and the certificates are loaded, RELOADING=1 (with
//     MONOTONIC_USEC, as Type=notify-reload requires) when a SIGHUP reload
//     starts and READY=1 when it has ended, whatever its outcome, and
//     STOPPING=1 when draining begins; STATUS= lines carry the sessions and
//     bans. With WatchdogSec= it sends WATCHDOG=1 every half period, but
//     only when the gateway's accept loops and event loops have answered a
//     liveness check since the last one, so a gateway whose loops are stuck
//     is restarted instead of kept alive by a timer. Nothing is sent when
//     NOTIFY_SOCKET is unset.
//   - Sockets hands out the listening sockets systemd passed in (socket
//     activation, a .socket unit): `--listen systemd:NAME` takes those
//     named NAME (FileDescriptorName=, LISTEN_FDNAMES), `--listen systemd:`
//     all of them. Sockets meant for another process (LISTEN_PID not ours)
//     are left alone, and the LISTEN_* variables are unset once read.
package systemd
