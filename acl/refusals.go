package acl

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Refusals at accept are logged at debug and sampled (Gate), which is
// right for a flood but leaves an operator whose client "just gets reset"
// with nothing to read at the default level. RefusalLog sums them up at
// info instead: the first refusal after a quiet spell is written at once,
// and while refusals go on, at most one line per Interval gives their
// count by route and reason and the sources refused most.
//
// Memory is bounded whoever connects: routes and reasons are fixed sets,
// and at most MaxSources distinct sources are counted per line; the rest
// are counted together.

// Defaults for RefusalLogConfig.
const (
	DefaultRefusalInterval   = time.Minute
	DefaultRefusalMaxSources = 1024
	DefaultRefusalTop        = 5
)

// RefusalLogConfig configures NewRefusalLog. Zero fields take the defaults.
type RefusalLogConfig struct {
	// Interval is the least time between two lines.
	Interval time.Duration
	// MaxSources caps the distinct sources counted per line.
	MaxSources int
	// Top is how many sources a line names.
	Top int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// afterFunc schedules the next line (time.AfterFunc); tests replace it.
	afterFunc func(time.Duration, func()) func() bool
}

// refusalKey is what a line counts by.
type refusalKey struct {
	route  string
	reason Decision
}

// RefusalLog writes the info summary of accept-time refusals.
type RefusalLog struct {
	cfg RefusalLogConfig
	log *zap.Logger

	mu      sync.Mutex
	last    time.Time // when the last line was written
	since   time.Time // first refusal not yet written
	counts  map[refusalKey]uint64
	sources map[netip.Addr]uint64
	others  uint64      // refusals from sources past MaxSources (or without an IP)
	stop    func() bool // the pending timer's Stop; nil when none
	closed  bool
}

// NewRefusalLog returns a RefusalLog writing to log.
func NewRefusalLog(cfg RefusalLogConfig, log *zap.Logger) *RefusalLog {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRefusalInterval
	}
	if cfg.MaxSources <= 0 {
		cfg.MaxSources = DefaultRefusalMaxSources
	}
	if cfg.Top <= 0 {
		cfg.Top = DefaultRefusalTop
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.afterFunc == nil {
		cfg.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &RefusalLog{cfg: cfg, log: log}
}

// OnReject returns a function with the signature of Gate's onReject that
// counts route's refusals.
func (r *RefusalLog) OnReject(route string) func(Decision, netip.Addr) {
	return func(d Decision, ip netip.Addr) { r.Note(route, d, ip) }
}

// Note counts one refusal; it writes the line now if none was written
// within Interval, else makes sure one will be.
func (r *RefusalLog) Note(route string, d Decision, ip netip.Addr) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	now := r.cfg.Now()
	if r.counts == nil {
		r.counts = make(map[refusalKey]uint64)
		r.sources = make(map[netip.Addr]uint64)
		r.since = now
	}
	r.counts[refusalKey{route, d}]++
	ip = normalize(ip)
	if _, ok := r.sources[ip]; (ok || len(r.sources) < r.cfg.MaxSources) && ip.IsValid() {
		r.sources[ip]++
	} else {
		r.others++
	}
	if wait := r.cfg.Interval - now.Sub(r.last); wait > 0 {
		if r.stop == nil {
			r.stop = r.cfg.afterFunc(wait, r.Flush)
		}
		r.mu.Unlock()
		return
	}
	line := r.takeLocked(now)
	r.mu.Unlock()
	r.write(line)
}

// Flush writes the refusals counted since the last line, if any.
func (r *RefusalLog) Flush() {
	r.mu.Lock()
	line := r.takeLocked(r.cfg.Now())
	r.mu.Unlock()
	r.write(line)
}

// Close writes what is pending (at shutdown) and stops counting.
func (r *RefusalLog) Close() {
	r.mu.Lock()
	line := r.takeLocked(r.cfg.Now())
	r.closed = true
	r.mu.Unlock()
	r.write(line)
}

// refusalLine is one summary, taken out of the lock to be written.
type refusalLine struct {
	since   time.Time
	counts  map[refusalKey]uint64
	sources map[netip.Addr]uint64
	others  uint64
}

// takeLocked ends the current summary and returns it (nil counts if there
// is nothing to write).
func (r *RefusalLog) takeLocked(now time.Time) refusalLine {
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
	line := refusalLine{since: r.since, counts: r.counts, sources: r.sources, others: r.others}
	if r.counts != nil {
		r.last = now
	}
	r.counts, r.sources, r.others = nil, nil, 0
	return line
}

// write logs one summary: the total, the count of each route and reason,
// and the Top sources by count.
func (r *RefusalLog) write(l refusalLine) {
	if len(l.counts) == 0 {
		return
	}
	var total uint64
	keys := make([]refusalKey, 0, len(l.counts))
	for k, n := range l.counts {
		keys = append(keys, k)
		total += n
	}
	slices.SortFunc(keys, func(a, b refusalKey) int {
		return cmp.Or(cmp.Compare(a.route, b.route), cmp.Compare(a.reason, b.reason))
	})
	top := make([]netip.Addr, 0, len(l.sources))
	for ip := range l.sources {
		top = append(top, ip)
	}
	slices.SortFunc(top, func(a, b netip.Addr) int {
		return cmp.Or(cmp.Compare(l.sources[b], l.sources[a]), a.Compare(b))
	})
	top = top[:min(len(top), r.cfg.Top)]

	fields := []zap.Field{
		zap.Uint64("refused", total),
		zap.Array("by_reason", zapcore.ArrayMarshalerFunc(func(enc zapcore.ArrayEncoder) error {
			for _, k := range keys {
				_ = enc.AppendObject(zapcore.ObjectMarshalerFunc(func(o zapcore.ObjectEncoder) error {
					o.AddString("route", k.route)
					o.AddString("reason", k.reason.String())
					o.AddUint64("count", l.counts[k])
					return nil
				}))
			}
			return nil
		})),
		zap.Array("top_sources", zapcore.ArrayMarshalerFunc(func(enc zapcore.ArrayEncoder) error {
			for _, ip := range top {
				_ = enc.AppendObject(zapcore.ObjectMarshalerFunc(func(o zapcore.ObjectEncoder) error {
					o.AddString("source", ip.String())
					o.AddUint64("count", l.sources[ip])
					return nil
				}))
			}
			return nil
		})),
		zap.Int("sources", len(l.sources)),
		zap.Time("since", l.since),
	}
	if l.others > 0 {
		// Refusals of sources past MaxSources, counted but not by source.
		fields = append(fields, zap.Uint64("refused_other_sources", l.others))
	}
	r.log.Info("connections refused at accept", fields...)
}
