package systemd

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// statusEvery is how often STATUS= is refreshed without a watchdog.
const statusEvery = 30 * time.Second

// Notifier sends the service's state to systemd. The zero value is not
// usable: build it with NewNotifier. Its methods are safe for concurrent
// use and do nothing when NOTIFY_SOCKET is unset.
type Notifier struct {
	log     *zap.Logger
	enabled bool

	// Status, if set, describes the service for STATUS= (e.g. "12
	// sessions, 3 bans"); a word saying what it is doing goes before it.
	Status func() string

	errOnce sync.Once
}

// NewNotifier returns a notifier for this process: enabled when systemd
// gave it a NOTIFY_SOCKET.
func NewNotifier(log *zap.Logger) *Notifier {
	if log == nil {
		log = zap.NewNop()
	}
	return &Notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
}

// Enabled reports whether there is a service manager to tell.
func (n *Notifier) Enabled() bool { return n.enabled }

// send writes one datagram of newline-separated assignments. A failure is
// logged once: the service keeps running, but systemd will not hear of it
// (and a Type=notify unit times out in start).
func (n *Notifier) send(state string) {
	if !n.enabled {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.errOnce.Do(func() {
			n.log.Warn("cannot notify systemd (NOTIFY_SOCKET)", zap.Error(err))
		})
	}
}

// status is the STATUS= assignment, or "" without a Status function.
func (n *Notifier) status(prefix string) string {
	if n.Status == nil {
		return ""
	}
	return "\nSTATUS=" + prefix + n.Status()
}

// Ready says the service is up: every listener bound, certificates loaded;
// also the end of a reload.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady + n.status("serving: ")) }

// Reloading says a reload has begun. MONOTONIC_USEC goes in the same
// datagram: Type=notify-reload units (systemd 253) need it to tell this
// reload from an earlier one. Ready must follow when it ends.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec() + "STATUS=reloading the configuration")
}

// Stopping says the service is shutting down: listeners closed, sessions
// draining.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping + n.status("draining: ")) }

// RunWatchdog runs until ctx ends. With a watchdog (WatchdogSec=, i.e.
// WATCHDOG_USEC for this process) it asks alive every half period, giving
// it until the next tick to answer, and sends WATCHDOG=1 only when it
// answered nil; STATUS= goes along. Without a watchdog it only refreshes
// STATUS= now and then. alive must make the loops that serve connections
// answer themselves (see gateway.Gateway.Alive): a ping from a goroutine
// of its own would keep a stuck service alive.
func (n *Notifier) RunWatchdog(ctx context.Context, alive func(context.Context) error) {
	if !n.enabled {
		return
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("ignoring a bad systemd watchdog setting (WATCHDOG_USEC, WATCHDOG_PID)", zap.Error(err))
		interval = 0
	}
	tick := statusEvery
	if interval > 0 {
		tick = interval / 2
		n.log.Info("systemd watchdog on", zap.Duration("interval", interval), zap.Duration("ping_every", tick))
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if interval <= 0 {
			if s := n.status("serving: "); s != "" {
				n.send(s[1:])
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, tick)
		err := alive(actx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// No WATCHDOG=1: if the loops stay stuck, systemd restarts the
			// service when WatchdogSec runs out.
			n.log.Error("liveness check failed; not notifying the systemd watchdog", zap.Error(err))
			n.send("STATUS=not answering: " + err.Error())
			continue
		}
		n.send(daemon.SdNotifyWatchdog + n.status("serving: "))
	}
}
