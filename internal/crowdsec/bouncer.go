package crowdsec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

// ErrUnauthorized is wrapped when the LAPI answers 401 or 403: the key in
// KeyFile is wrong or was revoked.
var ErrUnauthorized = errors.New("crowdsec LAPI rejected the bouncer key")

// Bouncer holds the decisions pulled from one LAPI. Banned is safe for
// concurrent use and never blocks; Pull and Run serialise themselves.
type Bouncer struct {
	cfg    Config
	log    *zap.Logger
	stream string // the stream endpoint's URL without query

	ix          atomic.Pointer[index]
	up          atomic.Bool
	lastSuccess atomic.Int64 // UnixNano; 0 before the first success
	held        atomic.Int64 // decisions held
	dropped     atomic.Uint64

	mu          sync.Mutex // serialises pulls; guards the fields below
	key         string
	decisions   map[int64]decision
	needStartup bool
	rereadKey   bool // the LAPI rejected the key: read KeyFile again first
	outage      bool // an outage is in progress (it was logged)
}

// New validates cfg (reading the key file) and returns a Bouncer holding
// no decisions; Run or Pull fills it.
func New(cfg Config) (*Bouncer, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	key, err := readKey(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	stream, err := url.JoinPath(cfg.URL, "v1/decisions/stream")
	if err != nil {
		return nil, fmt.Errorf("%w: URL %q: %w", ErrConfig, cfg.URL, err)
	}
	b := &Bouncer{cfg: cfg, log: cfg.Logger, stream: stream, key: key,
		decisions: map[int64]decision{}, needStartup: true}
	b.ix.Store(&index{})
	return b, nil
}

// Banned reports whether a running ban decision covers ip (IPv4-mapped
// IPv6 is unmapped first). It is the accept-path check: one atomic load,
// then one map lookup per prefix length in use.
func (b *Bouncer) Banned(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ix := b.ix.Load()
	if len(ix.ends) == 0 {
		return false
	}
	return ix.banned(ip.Unmap().WithZone(""), b.cfg.Now())
}

// Up reports whether the last pull succeeded (false before the first).
func (b *Bouncer) Up() bool { return b.up.Load() }

// LastSuccess is when a pull last succeeded (zero before the first).
func (b *Bouncer) LastSuccess() time.Time {
	if n := b.lastSuccess.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Decisions is the number of decisions held (some may have ended since the
// last pull; Banned ignores those).
func (b *Bouncer) Decisions() int { return int(b.held.Load()) }

// Dropped counts decisions ignored because MaxDecisions were held.
func (b *Bouncer) Dropped() uint64 { return b.dropped.Load() }

// Run pulls at once and then every Interval until ctx ends; it returns nil
// then. Failures are logged (once per outage) and retried at the next
// tick; the decisions held stay in force meanwhile.
func (b *Bouncer) Run(ctx context.Context) error {
	t := time.NewTicker(b.cfg.Interval)
	defer t.Stop()
	for {
		_ = b.Pull(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Pull fetches the decision stream once (the full state on the first pull
// and after a failure, else the changes) and applies it.
func (b *Bouncer) Pull(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	startup := b.needStartup
	resp, err := b.fetch(ctx, startup)
	if err != nil {
		if ctx.Err() == nil {
			b.failed(err)
		}
		return err
	}
	b.apply(resp, startup)
	b.needStartup = false
	b.succeeded()
	return nil
}

// fetch sends one stream request and decodes its answer.
func (b *Bouncer) fetch(ctx context.Context, startup bool) (*streamResponse, error) {
	if b.rereadKey {
		// The LAPI rejected the key last time: pick up a rotated one.
		if key, err := readKey(b.cfg.KeyFile); err == nil {
			b.key, b.rereadKey = key, false
		}
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	// dedup=false: by default the LAPI sends, per address, only its longest
	// decision, and reports a deleted one only when it was that longest;
	// deleting the longer of two decisions on an address is then never
	// announced, and deleting all of them announces one. Without dedup it
	// sends every decision and every deletion by id, which is the state
	// kept here. (CrowdSec 1.4.6, checked against Debian's LAPI; older
	// servers ignore the parameter.)
	q := url.Values{"startup": {fmt.Sprint(startup)}, "scopes": {"ip,range"}, "dedup": {"false"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.stream+"?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("building the crowdsec request: %w", err)
	}
	req.Header.Set("X-Api-Key", b.key)
	req.Header.Set("User-Agent", b.cfg.UserAgent)
	req.Header.Set("Accept", "application/json")
	res, err := b.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pulling crowdsec decisions: %w", err)
	}
	defer res.Body.Close()
	switch {
	case res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusForbidden:
		b.rereadKey = true
		return nil, fmt.Errorf("pulling crowdsec decisions: %w (HTTP %d from %s; check the key file %s)",
			ErrUnauthorized, res.StatusCode, b.stream, b.cfg.KeyFile)
	case res.StatusCode != http.StatusOK:
		snippet, _ := io.ReadAll(io.LimitReader(res.Body, 200))
		return nil, fmt.Errorf("pulling crowdsec decisions: HTTP %d from %s: %s", res.StatusCode, b.stream, printable(snippet))
	}
	body := &limitedReader{r: res.Body, n: b.cfg.MaxResponseBytes}
	sr, err := decodeStream(body, b.cfg.MaxDecisions)
	if err != nil {
		if body.over {
			return nil, fmt.Errorf("pulling crowdsec decisions: the response exceeds %d bytes", b.cfg.MaxResponseBytes)
		}
		return nil, fmt.Errorf("decoding crowdsec decisions: %w", err)
	}
	return sr, nil
}

// apply merges a decoded response into the decisions (replacing them on a
// startup pull), drops the ended ones, and publishes a new index.
func (b *Bouncer) apply(sr *streamResponse, startup bool) {
	now := b.cfg.Now()
	if startup {
		b.decisions = make(map[int64]decision, len(sr.added))
	}
	var dropped int
	for _, a := range sr.added {
		if _, held := b.decisions[a.id]; !held && len(b.decisions) >= b.cfg.MaxDecisions {
			dropped++
			continue
		}
		b.decisions[a.id] = decision{prefix: a.prefix, until: now.Add(a.duration), origin: a.origin, scenario: a.scenario}
	}
	for id := range sr.deleted {
		delete(b.decisions, id)
	}
	for id, d := range b.decisions {
		if !d.until.After(now) {
			delete(b.decisions, id)
		}
	}
	dropped += sr.overflow
	if dropped > 0 {
		b.dropped.Add(uint64(dropped))
		b.log.Warn("crowdsec decisions over the limit were ignored",
			zap.Int("ignored", dropped), zap.Int("max_decisions", b.cfg.MaxDecisions))
	}
	if sr.invalid > 0 {
		b.log.Debug("crowdsec decisions with an invalid value or duration were ignored", zap.Int("ignored", sr.invalid))
	}
	b.ix.Store(buildIndex(b.decisions, now))
	b.held.Store(int64(len(b.decisions)))
}

func (b *Bouncer) succeeded() {
	b.up.Store(true)
	b.lastSuccess.Store(b.cfg.Now().UnixNano())
	if b.outage {
		b.outage = false
		b.log.Info("crowdsec LAPI reachable again", zap.Int("decisions", len(b.decisions)))
	}
}

// failed records a failed pull: the next one asks for the full state, and
// the first failure of an outage is logged.
func (b *Bouncer) failed(err error) {
	b.up.Store(false)
	b.needStartup = true
	if b.outage {
		b.log.Debug("crowdsec pull failed", zap.Error(err))
		return
	}
	b.outage = true
	fields := []zap.Field{zap.Error(err), zap.Int("decisions_kept", len(b.decisions))}
	if errors.Is(err, ErrUnauthorized) {
		b.log.Error("crowdsec LAPI rejected the bouncer key; last known decisions stay in force", fields...)
		return
	}
	b.log.Warn("crowdsec LAPI unavailable; last known decisions stay in force", fields...)
}

// limitedReader reads at most n bytes and remembers whether there were
// more, so a truncated response is reported as too large, not malformed.
type limitedReader struct {
	r    io.Reader
	n    int64
	over bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			l.over = true
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// printable renders an error body for a log line: valid UTF-8, no control
// characters.
func printable(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return ' '
		}
		return r
	}, string(b))
	return strings.TrimSpace(s)
}
