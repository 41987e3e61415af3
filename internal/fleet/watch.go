package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// readCount is the most stream entries one XREAD returns.
const readCount = 512

// EventType says what an Event announces.
type EventType string

// The event types, as they appear in the stream's "t" field.
const (
	EventBan    EventType = "ban"    // Ban is set
	EventUnban  EventType = "unban"  // Key is set
	EventPut    EventType = "put"    // Record (and Ref) are set
	EventRevoke EventType = "revoke" // Ref is set, and Record.Data to the revoker's note, if any
)

// Event is one change another gateway published.
type Event struct {
	Type   EventType
	Key    netip.Prefix // ban and unban
	Ban    Ban          // ban
	Ref    RecordRef    // put and revoke
	Record Record       // put
	Origin string       // the publishing gateway's Instance
	ID     string       // the stream entry id
}

// WatchConfig says what Watch does with what it reads.
type WatchConfig struct {
	// OnEvent is called for each change another gateway published, in
	// stream order, from Watch's goroutine. It should return quickly:
	// later events wait for it. Events may repeat after a resync; applying
	// one twice must be harmless (bans merge, unbans are idempotent).
	OnEvent func(Event)
	// Local returns the state this gateway holds, pushed to the fleet on
	// every resync (see Push); nil pushes nothing.
	Local func() (bans []Ban, records []Record)
	// OnResync is called after every resync with the fleet's full state
	// and what the push found stale. The caller adopts the fleet's bans
	// and records and drops the stale local ones.
	OnResync func(Snapshot, PushResult)
	// Block is how long one XREAD waits for entries; default 1s. It bounds
	// how late Watch notices ctx's end and a lost epoch, not how late an
	// event arrives: XREAD returns as soon as one is appended.
	Block time.Duration
	// ResyncInterval forces a full resync this often even without an
	// outage, as a safety net; default 5m.
	ResyncInterval time.Duration
}

// watchState is what Watch remembers between reads.
type watchState struct {
	lastID     string // the last stream entry seen
	seen       int64  // the stream's entries-added count up to lastID
	epoch      string // the epoch value at the last resync
	lastResync time.Time
	lastCheck  time.Time // when epoch and trimming were last checked
}

// errResync makes the read loop resynchronise.
var errResync = errors.New("resync needed")

// Watch follows the fleet's changes until ctx ends, and returns nil then.
// On every (re)connect, when Redis lost its data (the epoch key vanished or
// changed), when entries were trimmed before it read them (both checked
// once per Block), and every ResyncInterval, it resynchronises: the local state is pushed, then
// OnResync receives the fleet's full state. While Redis is down it retries
// every RetryInterval; Up reports the outage meanwhile.
func (s *Store) Watch(ctx context.Context, wc WatchConfig) error {
	if wc.Block <= 0 {
		wc.Block = DefaultBlock
	}
	if wc.ResyncInterval <= 0 {
		wc.ResyncInterval = DefaultResyncInterval
	}
	if wc.OnEvent == nil {
		wc.OnEvent = func(Event) {}
	}
	if wc.OnResync == nil {
		wc.OnResync = func(Snapshot, PushResult) {}
	}
	var w watchState
	for {
		err := s.watchConnected(ctx, wc, &w)
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, ErrUnavailable) && !isOutage(err) {
			// Outages are logged once by health; anything else is a bug or
			// foreign data, worth a line each time (at most once a retry).
			s.log.Warn("fleet watch failed; retrying", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.cfg.RetryInterval):
		}
	}
}

// watchConnected probes Redis, resyncs, and reads the stream until an
// error.
func (s *Store) watchConnected(ctx context.Context, wc WatchConfig, w *watchState) error {
	// Watch is what notices Redis coming back, so its probe bypasses the
	// breaker that makes other calls fail fast.
	if err := s.ping(ctx); err != nil {
		return err
	}
	if err := s.resync(ctx, wc, w); err != nil {
		return err
	}
	for ctx.Err() == nil {
		err := s.readOnce(ctx, wc, w)
		if errors.Is(err, errResync) {
			err = s.resync(ctx, wc, w)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) ping(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	err := s.rdb.Ping(cctx).Err()
	s.observe(ctx, err)
	if err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	return nil
}

// resync records the stream's current end, pushes the local state, and
// hands the fleet's state to OnResync. Entries appended after the recorded
// end are read next, so nothing falls between the snapshot and the stream;
// some may repeat what the snapshot already holds.
func (s *Store) resync(ctx context.Context, wc WatchConfig, w *watchState) error {
	var lastID, epoch string
	var seen int64
	err := s.call(ctx, func(ctx context.Context) error {
		info, err := s.streamInfo(ctx)
		if err != nil {
			return err
		}
		lastID, seen = info.LastGeneratedID, info.EntriesAdded
		epoch, err = s.ensureEpoch(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("starting a resync with redis: %w", err)
	}
	var pushed PushResult
	if wc.Local != nil {
		bans, recs := wc.Local()
		if pushed, err = s.Push(ctx, bans, recs); err != nil {
			return err
		}
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	w.lastID, w.seen, w.epoch, w.lastResync, w.lastCheck = lastID, seen, epoch, now, now
	s.log.Debug("fleet resync", zap.Int("bans", len(snap.Bans)), zap.Int("records", len(snap.Records)),
		zap.Int("pushed", pushed.Stored), zap.Int("stale", len(pushed.StaleBans)+len(pushed.StaleRecords)))
	wc.OnResync(snap, pushed)
	return nil
}

// ensureEpoch returns the epoch value, creating it if Redis has none. All
// gateways that find it missing race on SET NX, so they agree on one.
func (s *Store) ensureEpoch(ctx context.Context) (string, error) {
	k := s.key("epoch")
	v, err := s.rdb.Get(ctx, k).Result()
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	if err := s.rdb.SetNX(ctx, k, hex.EncodeToString(b[:]), 0).Err(); err != nil {
		return "", err
	}
	return s.rdb.Get(ctx, k).Result()
}

// readOnce checks the epoch and the trimming (at most once per Block),
// then reads one batch of entries and delivers them.
func (s *Store) readOnce(ctx context.Context, wc WatchConfig, w *watchState) error {
	now := time.Now()
	if now.Sub(w.lastResync) >= wc.ResyncInterval {
		return errResync
	}
	if now.Sub(w.lastCheck) >= wc.Block {
		if err := s.check(ctx, w); err != nil {
			return err
		}
		w.lastCheck = now
	}
	// The blocking read has its own deadline: Block plus the call timeout.
	cctx, cancel := context.WithTimeout(ctx, wc.Block+s.cfg.Timeout)
	defer cancel()
	streams, err := s.rdb.XRead(cctx, &redis.XReadArgs{
		Streams: []string{s.key("events"), w.lastID},
		Count:   readCount,
		Block:   wc.Block,
	}).Result()
	s.observe(ctx, err)
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading fleet events from redis: %w", err)
	}
	for _, st := range streams {
		for _, m := range st.Messages {
			w.seen++
			w.lastID = m.ID
			ev, err := decodeEvent(m)
			if err != nil {
				s.log.Debug("skipping a fleet event", zap.String("id", m.ID), zap.Error(err))
				continue
			}
			if ev.Origin == s.cfg.Instance {
				continue
			}
			wc.OnEvent(ev)
		}
	}
	return nil
}

// check returns errResync when Redis lost the fleet's state (the epoch
// vanished or changed: a restart without persistence, a failover to an
// empty replica, a FLUSHALL) or when entries were trimmed before this
// gateway read them. The stream's entries-added counter (Redis 7.0) tells
// the latter exactly: entries 1..added-length are gone, and this gateway
// has read up to entry seen. Older servers report 0 and skip that check.
func (s *Store) check(ctx context.Context, w *watchState) error {
	var epoch string
	var info streamInfo
	err := s.call(ctx, func(ctx context.Context) error {
		var err error
		epoch, err = s.rdb.Get(ctx, s.key("epoch")).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		info, err = s.streamInfo(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("checking the fleet state in redis: %w", err)
	}
	if epoch != w.epoch {
		s.log.Info("redis lost or replaced the fleet state; resynchronising")
		return errResync
	}
	if w.seen < info.EntriesAdded-info.Length {
		s.log.Warn("fleet events were trimmed before this gateway read them; resynchronising",
			zap.Int64("unread_trimmed", info.EntriesAdded-info.Length-w.seen))
		return errResync
	}
	return nil
}

// streamInfo is what the watch needs from XINFO STREAM.
type streamInfo struct {
	LastGeneratedID string
	EntriesAdded    int64
	Length          int64
}

// streamInfo reads the event stream's position; a stream that does not
// exist yet is empty.
func (s *Store) streamInfo(ctx context.Context) (streamInfo, error) {
	info, err := s.rdb.XInfoStream(ctx, s.key("events")).Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) && strings.Contains(rerr.Error(), "no such key") {
			return streamInfo{LastGeneratedID: "0-0"}, nil
		}
		return streamInfo{}, err
	}
	return streamInfo{LastGeneratedID: info.LastGeneratedID, EntriesAdded: info.EntriesAdded, Length: info.Length}, nil
}

// decodeEvent reads one stream entry.
func decodeEvent(m redis.XMessage) (Event, error) {
	str := func(k string) string { v, _ := m.Values[k].(string); return v }
	ev := Event{Type: EventType(str("t")), Origin: str("o"), ID: m.ID}
	key, value := str("k"), str("v")
	switch ev.Type {
	case EventBan:
		b, err := decodeBan(key, value)
		if err != nil {
			return Event{}, err
		}
		ev.Key, ev.Ban = b.Key, b
	case EventUnban:
		p, err := netip.ParsePrefix(key)
		if err != nil {
			return Event{}, fmt.Errorf("unban key %q: %w", key, err)
		}
		if err := validPrefix(p); err != nil {
			return Event{}, err
		}
		ev.Key = p
	case EventPut:
		r, err := decodeRecord(key, value)
		if err != nil {
			return Event{}, err
		}
		ev.Record, ev.Ref = r, RecordRef{r.Kind, r.ID}
	case EventRevoke:
		kind, id, _ := strings.Cut(key, "/")
		ref := RecordRef{kind, id}
		if err := checkRef(ref); err != nil {
			return Event{}, err
		}
		ev.Ref = ref
		if value != "" && json.Valid([]byte(value)) {
			ev.Record = Record{Kind: kind, ID: id, Data: json.RawMessage(value), Origin: ev.Origin}
		}
	default:
		return Event{}, fmt.Errorf("unknown event type %q", ev.Type)
	}
	return ev, nil
}
