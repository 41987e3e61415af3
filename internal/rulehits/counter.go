package rulehits

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
)

// Defaults for Config.
const (
	DefaultFlushEvery = 10 * time.Second
	DefaultMaxDynamic = 10000
	// dynamicTTL is how long the record of a dynamic rule (a grant, which
	// ends by itself) is kept after its last hit; allowlist records live as
	// long as their entry.
	dynamicTTL = 180 * 24 * time.Hour
)

// bucket holds one record per route and entry, keyed "route\x00entry".
var bucket = []byte("rule_hits")

// SourceAllowlist is acl.Rule.Source for an allowlist entry.
const SourceAllowlist = "allowlist"

// Hits is one rule's count: the admin API's GET /rules element.
type Hits struct {
	Route string `json:"route"`
	// Entry is the allowlist prefix ("10.0.0.0/8"), or SOURCE:ID for a rule
	// with an id of its own ("grant:3f9a...").
	Entry string `json:"entry"`
	// Hits counts the connections it admitted since Since.
	Hits uint64 `json:"hits"`
	// LastHit is the last of them; null when there was none.
	LastHit *time.Time `json:"last_hit"`
	// Since is when counting began for this entry.
	Since time.Time `json:"since"`
}

// Stale reports whether h admitted nothing within d before now: its last
// hit, or if it never had one the start of its count, is older.
func (h Hits) Stale(now time.Time, d time.Duration) bool {
	last := h.Since
	if h.LastHit != nil {
		last = *h.LastHit
	}
	return !last.After(now.Add(-d))
}

// record is a cell as stored.
type record struct {
	Hits    uint64     `json:"hits"`
	LastHit *time.Time `json:"last_hit,omitempty"`
	Since   time.Time  `json:"since"`
}

// Config configures New.
type Config struct {
	// DB is the state file, or nil to count in memory only.
	DB *bolt.DB
	// FlushEvery is how often Run writes changed counts; 0 means
	// DefaultFlushEvery.
	FlushEvery time.Duration
	// MaxDynamic bounds the cells of rules that are not allowlist entries;
	// 0 means DefaultMaxDynamic.
	MaxDynamic int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives write errors; nil means none.
	Logger *zap.Logger
}

// cell counts one route's one entry.
type cell struct {
	route, entry string
	hits         atomic.Uint64
	last         atomic.Int64 // unix nanoseconds of the last hit; 0 for none
	since        time.Time
	dirty        atomic.Bool
}

func (c *cell) hit(now int64) {
	c.hits.Add(1)
	c.last.Store(now)
	c.dirty.Store(true)
}

func (c *cell) snapshot() Hits {
	h := Hits{Route: c.route, Entry: c.entry, Hits: c.hits.Load(), Since: c.since}
	if ns := c.last.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC()
		h.LastHit = &t
	}
	return h
}

// Counter counts hits for every route of a gateway.
type Counter struct {
	cfg Config
	log *zap.Logger

	// mu guards everything below and every Route's other map; Hit takes it
	// only for rules that are not allowlist entries.
	mu      sync.Mutex
	routes  []*Route
	stored  map[string]record  // records read at New and not claimed by a cell yet
	dynamic int                // cells in the Routes' other maps
	pending map[string]*record // writes (nil: delete) for the next flush, beyond dirty cells
}

// New reads the stored counts from cfg.DB (if any).
func New(cfg Config) (*Counter, error) {
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = DefaultFlushEvery
	}
	if cfg.MaxDynamic <= 0 {
		cfg.MaxDynamic = DefaultMaxDynamic
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c := &Counter{cfg: cfg, log: cfg.Logger, stored: map[string]record{}, pending: map[string]*record{}}
	if cfg.DB == nil {
		return c, nil
	}
	now := cfg.Now()
	err := cfg.DB.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil || !strings.Contains(string(k), "\x00") {
				// One bad record costs its count, not the gateway.
				c.log.Warn("dropping an unreadable rule hit record", zap.ByteString("key", k), zap.Error(err))
				c.pending[string(k)] = nil
				return nil
			}
			_, entry, _ := strings.Cut(string(k), "\x00")
			if isDynamic(entry) && r.latest().Before(now.Add(-dynamicTTL)) {
				c.pending[string(k)] = nil // a grant long gone
				return nil
			}
			c.stored[string(k)] = r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("reading rule hits: %w", err)
	}
	return c, nil
}

// isDynamic reports an entry of a rule that is not an allowlist prefix.
func isDynamic(entry string) bool {
	_, err := netip.ParsePrefix(entry)
	return err != nil
}

// latest is the record's last hit, or its start.
func (r record) latest() time.Time {
	if r.LastHit != nil {
		return *r.LastHit
	}
	return r.Since
}

func key(route, entry string) string { return route + "\x00" + entry }

// newCellLocked makes the cell of route and entry, from its stored record
// if there is one; a new entry starts counting now and is written at the
// next flush, so its start survives a restart.
func (c *Counter) newCellLocked(route, entry string, now time.Time) *cell {
	cl := &cell{route: route, entry: entry, since: now.UTC()}
	k := key(route, entry)
	delete(c.pending, k)
	if r, ok := c.stored[k]; ok {
		delete(c.stored, k)
		cl.hits.Store(r.Hits)
		if r.LastHit != nil {
			cl.last.Store(r.LastHit.UnixNano())
		}
		if !r.Since.IsZero() {
			cl.since = r.Since.UTC()
		}
	} else {
		cl.dirty.Store(true)
	}
	return cl
}

// Route is one route's counts; the accept path of the route holds it.
type Route struct {
	c     *Counter
	name  string
	allow atomic.Pointer[map[netip.Prefix]*cell]
	// entries are the allowlist's prefixes in order, and other the cells
	// of dynamic rules; both under c.mu.
	entries []netip.Prefix
	other   map[string]*cell
}

// Route returns the counts of the route name, creating them.
func (c *Counter) Route(name string) *Route {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.routes {
		if r.name == name {
			return r
		}
	}
	r := &Route{c: c, name: name, other: map[string]*cell{}}
	empty := map[netip.Prefix]*cell{}
	r.allow.Store(&empty)
	c.routes = append(c.routes, r)
	return r
}

// SetAllowlist makes the route count the entries of a (at start, and after
// each reload): entries still listed keep their counts, new ones start at
// zero, and the counts of entries no longer listed are dropped.
func (r *Route) SetAllowlist(a *acl.Allowlist) {
	c := r.c
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *r.allow.Load()
	prefixes := a.Prefixes()
	next := make(map[netip.Prefix]*cell, len(prefixes))
	for _, p := range prefixes {
		if cl, ok := old[p]; ok {
			next[p] = cl
			continue
		}
		next[p] = c.newCellLocked(r.name, p.String(), now)
	}
	for p := range old {
		if _, ok := next[p]; !ok {
			c.pending[key(r.name, p.String())] = nil
		}
	}
	r.entries = prefixes
	r.allow.Store(&next)
}

// Hit counts one connection rule admitted. For an allowlist entry it takes
// no lock and allocates nothing; a rule of another source takes the
// counter's lock (and makes its cell the first time).
func (r *Route) Hit(rule acl.Rule) {
	now := r.c.cfg.Now()
	if rule.Source == SourceAllowlist {
		if cl := (*r.allow.Load())[rule.Prefix]; cl != nil {
			cl.hit(now.UnixNano())
		}
		return
	}
	entry := rule.Source + ":" + rule.ID
	if rule.ID == "" {
		entry = rule.Source + ":" + rule.Prefix.String()
	}
	c := r.c
	c.mu.Lock()
	cl := r.other[entry]
	if cl == nil {
		if c.dynamic >= c.cfg.MaxDynamic {
			c.evictDynamicLocked()
		}
		cl = c.newCellLocked(r.name, entry, now)
		r.other[entry] = cl
		c.dynamic++
	}
	c.mu.Unlock()
	cl.hit(now.UnixNano())
}

// evictDynamicLocked forgets the least recently hit dynamic cell of any
// route; its count is written at the next flush and picked up again if
// the rule comes back. It is O(MaxDynamic), and runs only when a new rule
// is hit with the table full.
func (c *Counter) evictDynamicLocked() {
	var victim *cell
	var from *Route
	for _, rt := range c.routes {
		for _, cl := range rt.other {
			if victim == nil || cl.last.Load() < victim.last.Load() {
				victim, from = cl, rt
			}
		}
	}
	if victim == nil {
		return
	}
	delete(from.other, victim.entry)
	c.dynamic--
	rec := toRecord(victim.snapshot())
	k := key(victim.route, victim.entry)
	c.stored[k] = rec
	c.pending[k] = &rec
}

func toRecord(h Hits) record { return record{Hits: h.Hits, LastHit: h.LastHit, Since: h.Since} }

// List returns every counted entry: each route's allowlist entries in
// order, then its other rules by entry.
func (c *Counter) List() []Hits {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Hits
	for _, r := range c.routes {
		allow := *r.allow.Load()
		for _, p := range r.entries {
			if cl := allow[p]; cl != nil {
				out = append(out, cl.snapshot())
			}
		}
		start := len(out)
		for _, cl := range r.other {
			out = append(out, cl.snapshot())
		}
		sort.Slice(out[start:], func(i, j int) bool { return out[start+i].Entry < out[start+j].Entry })
	}
	return out
}

// cellsLocked returns every cell.
func (c *Counter) cellsLocked() []*cell {
	var out []*cell
	for _, r := range c.routes {
		for _, cl := range *r.allow.Load() {
			out = append(out, cl)
		}
		for _, cl := range r.other {
			out = append(out, cl)
		}
	}
	return out
}

// Flush writes the counts that changed since the last flush, in one
// transaction. Without a state file it does nothing.
func (c *Counter) Flush() error {
	if c.cfg.DB == nil {
		return nil
	}
	c.mu.Lock()
	pending := c.pending
	c.pending = map[string]*record{}
	var cells []*cell
	for _, cl := range c.cellsLocked() {
		// Cleared before reading: a hit during the write marks it again.
		if cl.dirty.Swap(false) {
			cells = append(cells, cl)
		}
	}
	c.mu.Unlock()
	if len(pending) == 0 && len(cells) == 0 {
		return nil
	}
	err := c.cfg.DB.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		put := func(k string, r *record) error {
			if r == nil {
				return b.Delete([]byte(k))
			}
			data, err := json.Marshal(r)
			if err != nil {
				return err
			}
			return b.Put([]byte(k), data)
		}
		for k, r := range pending {
			if err := put(k, r); err != nil {
				return err
			}
		}
		for _, cl := range cells {
			r := toRecord(cl.snapshot())
			if err := put(key(cl.route, cl.entry), &r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Keep what was not written for the next try, unless something
		// newer replaced it meanwhile.
		c.mu.Lock()
		for k, r := range pending {
			if _, newer := c.pending[k]; !newer {
				c.pending[k] = r
			}
		}
		c.mu.Unlock()
		for _, cl := range cells {
			cl.dirty.Store(true)
		}
		return fmt.Errorf("writing rule hits: %w", err)
	}
	return nil
}

// Run flushes every FlushEvery until ctx ends, then once more. A failed
// write is logged and retried at the next tick.
func (c *Counter) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := c.Flush(); err != nil {
				c.log.Error("rule hit counts not saved at shutdown", zap.Error(err))
			}
			return
		case <-t.C:
			if err := c.Flush(); err != nil {
				c.log.Error("saving rule hit counts failed; retrying", zap.Error(err))
			}
		}
	}
}
