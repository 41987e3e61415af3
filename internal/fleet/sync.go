package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/redis/go-redis/v9"
)

// pushChunk is how many items one pipelined round trip of Push carries, so
// each stays well inside the per-call timeout.
const pushChunk = 256

// Snapshot is the fleet's full state at one instant.
type Snapshot struct {
	// At is the Redis server's clock when the snapshot was taken.
	At      time.Time
	Bans    []Ban
	Records []Record
	// Skipped counts entries that could not be decoded (written by
	// something else than this package); they are left alone.
	Skipped int
}

// Snapshot returns every active ban and record, after pruning the expired
// ones, atomically.
func (s *Store) Snapshot(ctx context.Context) (Snapshot, error) {
	var out Snapshot
	err := s.call(ctx, func(ctx context.Context) error {
		res, err := snapshotScript.Run(ctx, s.rdb,
			[]string{s.key("ban"), s.key("ban:exp"), s.key("rec"), s.key("rec:exp")}).Slice()
		if err != nil {
			return err
		}
		out, err = decodeSnapshot(res)
		return err
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading the fleet state from redis: %w", err)
	}
	return out, nil
}

func decodeSnapshot(res []any) (Snapshot, error) {
	if len(res) != 3 {
		return Snapshot{}, fmt.Errorf("snapshot script returned %d values", len(res))
	}
	now, ok := res[0].(int64)
	if !ok {
		return Snapshot{}, fmt.Errorf("snapshot script returned a time of type %T", res[0])
	}
	out := Snapshot{At: time.UnixMilli(now)}
	out.Skipped += eachPair(res[1], func(k, v string) error {
		b, err := decodeBan(k, v)
		if err == nil {
			out.Bans = append(out.Bans, b)
		}
		return err
	})
	out.Skipped += eachPair(res[2], func(k, v string) error {
		r, err := decodeRecord(k, v)
		if err == nil {
			out.Records = append(out.Records, r)
		}
		return err
	})
	return out, nil
}

// eachPair calls fn for each field and value of an HGETALL reply and
// returns how many fn refused.
func eachPair(reply any, fn func(k, v string) error) (refused int) {
	kv, _ := reply.([]any)
	for i := 0; i+1 < len(kv); i += 2 {
		k, _ := kv[i].(string)
		v, _ := kv[i+1].(string)
		if fn(k, v) != nil {
			refused++
		}
	}
	return refused
}

// PushResult says what Push did with the local state it offered.
type PushResult struct {
	// Stored counts the items the fleet lacked (or held older or shorter).
	Stored int
	// StaleBans are local bans the fleet lifted after they were made, and
	// StaleRecords local records it revoked after they were last changed:
	// the caller drops them locally.
	StaleBans    []netip.Prefix
	StaleRecords []RecordRef
}

// Push offers this gateway's state to the fleet after an outage (or a
// Redis restart that lost the fleet's): each ban and record is stored
// unless the fleet lifted it after it was made, already holds it at least
// as long (bans) or as new (records), or it has expired. Stored items are
// announced like new ones. Bans keep their local Until, Failures, Bans and
// At; records their Until, Data and At. Origin is set here.
func (s *Store) Push(ctx context.Context, bans []Ban, records []Record) (PushResult, error) {
	var out PushResult
	if len(bans) == 0 && len(records) == 0 {
		return out, nil
	}
	if err := s.loadScripts(ctx); err != nil {
		return out, err
	}
	for len(bans) > 0 {
		n := min(len(bans), pushChunk)
		if err := s.pushBans(ctx, bans[:n], &out); err != nil {
			return out, err
		}
		bans = bans[n:]
	}
	for len(records) > 0 {
		n := min(len(records), pushChunk)
		if err := s.pushRecords(ctx, records[:n], &out); err != nil {
			return out, err
		}
		records = records[n:]
	}
	return out, nil
}

// loadScripts puts every script into the server's cache, so the pipelined
// EVALSHA calls of Push find them even after a restart emptied it.
func (s *Store) loadScripts(ctx context.Context) error {
	err := s.call(ctx, func(ctx context.Context) error {
		for _, sc := range allScripts {
			if err := sc.Load(ctx, s.rdb).Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading the fleet scripts into redis: %w", err)
	}
	return nil
}

func (s *Store) pushBans(ctx context.Context, bans []Ban, out *PushResult) error {
	for _, b := range bans {
		if err := validPrefix(b.Key); err != nil {
			return err
		}
	}
	cmds := make([]*redis.Cmd, len(bans))
	err := s.call(ctx, func(ctx context.Context) error {
		pipe := s.rdb.Pipeline()
		for i, b := range bans {
			cmds[i] = pushBanScript.EvalSha(ctx, pipe, s.banKeys(b.Key), b.Key.String(), b.Until.UnixMilli(),
				b.Failures, boolArg(b.Manual), s.cfg.Instance, s.cfg.HistoryTTL.Milliseconds(),
				s.cfg.StreamMaxLen, b.At.UnixMilli(), b.Bans)
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("pushing local bans to redis: %w", err)
	}
	for i, c := range cmds {
		res, err := c.StringSlice()
		if err != nil || len(res) != 2 {
			return fmt.Errorf("pushing the ban of %s to redis: %w", bans[i].Key, err)
		}
		switch res[0] {
		case "stored":
			out.Stored++
		case "stale":
			out.StaleBans = append(out.StaleBans, bans[i].Key)
		}
	}
	return nil
}

func (s *Store) pushRecords(ctx context.Context, recs []Record, out *PushResult) error {
	values := make([][]byte, len(recs))
	for i, r := range recs {
		if err := s.checkRecord(r); err != nil {
			return err
		}
		v, err := json.Marshal(recordJSON{Until: r.Until.UnixMilli(), At: r.At.UnixMilli(), Origin: s.cfg.Instance, Data: r.Data})
		if err != nil {
			return fmt.Errorf("encoding record %s/%s: %w", r.Kind, r.ID, err)
		}
		values[i] = v
	}
	cmds := make([]*redis.Cmd, len(recs))
	err := s.call(ctx, func(ctx context.Context) error {
		pipe := s.rdb.Pipeline()
		for i, r := range recs {
			cmds[i] = putRecordScript.EvalSha(ctx, pipe, s.recKeys(), RecordRef{r.Kind, r.ID}.field(),
				r.Until.UnixMilli(), values[i], s.cfg.Instance, s.cfg.StreamMaxLen, r.At.UnixMilli(), "push")
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("pushing local records to redis: %w", err)
	}
	for i, c := range cmds {
		res, err := c.StringSlice()
		if err != nil || len(res) != 2 {
			return fmt.Errorf("pushing record %s/%s to redis: %w", recs[i].Kind, recs[i].ID, err)
		}
		switch res[0] {
		case "stored":
			out.Stored++
		case "stale":
			out.StaleRecords = append(out.StaleRecords, RecordRef{recs[i].Kind, recs[i].ID})
		}
	}
	return nil
}
