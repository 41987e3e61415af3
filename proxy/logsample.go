package proxy

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Every connection ends with one "connection closed" line. For the ones
// that did not become a session (refused at the pre-authentication caps,
// unknown cancel keys, bad startups, failed logins...) an allowed source
// controls how many there are: one host opening connections in a loop
// wrote thousands of lines a second. Those lines are sampled per source
// and outcome: in each window the first few are written in full, the rest
// only counted, and when the window ends one "connections not logged" line
// per source and outcome gives the count. Sessions (outcome "ok") are
// always logged in full; so are bans, which the jail logs.
//
// Defaults for LogSampling: per source and outcome, 10 full lines per 10 s;
// at most 1000 full lines per window over all sources, and 1024 (source,
// outcome) pairs tracked per window (about 100 KiB). Past that, further
// pairs share one counter per outcome, logged with source "other".
const (
	DefaultLogSampleFirst    = 10
	DefaultLogSampleWindow   = 10 * time.Second
	DefaultLogSampleMaxLines = 1000
	DefaultLogSampleMaxKeys  = 1024
)

// LogSampling configures the sampling of connection lines (see above).
// Zero fields take the defaults.
type LogSampling struct {
	// First is how many lines per source and outcome are written in full
	// in each Window.
	First  int
	Window time.Duration
	// MaxLines caps the full lines per Window over all sources.
	MaxLines int
	// MaxKeys caps the (source, outcome) pairs counted per Window.
	MaxKeys int
}

func (l *LogSampling) setDefaults() {
	if l.First <= 0 {
		l.First = DefaultLogSampleFirst
	}
	if l.Window <= 0 {
		l.Window = DefaultLogSampleWindow
	}
	if l.MaxLines <= 0 {
		l.MaxLines = DefaultLogSampleMaxLines
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = DefaultLogSampleMaxKeys
	}
}

// sampleKey is what lines are counted by. An invalid source is the shared
// counter of pairs past MaxKeys (and of peers without an IP address).
type sampleKey struct {
	source  netip.Prefix
	outcome Outcome
}

type sampleCount struct{ logged, suppressed int }

// logSampler decides which connection lines to write and writes the
// summaries. A window starts with its first line and ends with a timer
// (no goroutine waits meanwhile); stop ends the current one at Shutdown.
type logSampler struct {
	cfg   LogSampling
	log   *zap.Logger
	route string

	mu      sync.Mutex
	start   time.Time
	counts  map[sampleKey]*sampleCount // nil between windows
	lines   int                        // full lines in this window
	timer   *time.Timer
	stopped bool
}

func newLogSampler(cfg LogSampling, log *zap.Logger, route string) *logSampler {
	return &logSampler{cfg: cfg, log: log, route: route}
}

// sample records one connection line of outcome from remote and reports
// whether to write it in full.
func (ls *logSampler) sample(remote netip.Addr, outcome Outcome) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.stopped {
		return true // after Shutdown's summary nothing is held back
	}
	if ls.counts == nil {
		ls.counts = make(map[sampleKey]*sampleCount)
		ls.start = time.Now()
		ls.timer = time.AfterFunc(ls.cfg.Window, ls.flush)
	}
	k := sampleKey{source: sourceKey(remote), outcome: outcome}
	c, ok := ls.counts[k]
	if !ok && len(ls.counts) >= ls.cfg.MaxKeys {
		k.source = netip.Prefix{}
		c, ok = ls.counts[k]
	}
	if !ok {
		// Past MaxKeys this adds at most one key per outcome, and
		// outcomes are a fixed set (outcome.go).
		c = &sampleCount{}
		ls.counts[k] = c
	}
	if c.logged < ls.cfg.First && ls.lines < ls.cfg.MaxLines {
		c.logged++
		ls.lines++
		return true
	}
	c.suppressed++
	return false
}

// flush ends the current window: one summary line per source and outcome
// that had lines held back.
func (ls *logSampler) flush() {
	ls.mu.Lock()
	counts, start := ls.counts, ls.start
	ls.counts, ls.lines, ls.timer = nil, 0, nil
	ls.mu.Unlock()
	keys := make([]sampleKey, 0, len(counts))
	for k, c := range counts {
		if c.suppressed > 0 {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b sampleKey) int {
		return cmp.Or(a.source.Addr().Compare(b.source.Addr()), cmp.Compare(a.outcome.String(), b.outcome.String()))
	})
	for _, k := range keys {
		source := "other"
		if k.source.IsValid() {
			source = k.source.String()
			if k.source.IsSingleIP() {
				source = k.source.Addr().String()
			}
		}
		ls.log.Info("connections not logged",
			zap.String("route", ls.route),
			zap.String("source", source),
			zap.String("outcome", k.outcome.String()),
			zap.Int("suppressed", counts[k].suppressed),
			zap.Int("logged", counts[k].logged),
			zap.Time("since", start))
	}
}

// stop writes the summary of the current window now and ends sampling.
func (ls *logSampler) stop() {
	ls.mu.Lock()
	ls.stopped = true
	if ls.timer != nil {
		ls.timer.Stop()
	}
	ls.mu.Unlock()
	ls.flush()
}
