package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Ban is one fleet-wide ban.
type Ban struct {
	// Key is the banned address (a /32 or /128) or prefix, as the jail
	// keys its bans.
	Key netip.Prefix
	// Until is when the ban lifts.
	Until time.Time
	// Failures is how many failures caused it (0 for a manual ban).
	Failures int
	// Bans is the source's fleet-wide ban count, this ban included.
	Bans int
	// Manual is true for an operator's ban.
	Manual bool
	// At is when the ban was made; Origin is the gateway that made it.
	At     time.Time
	Origin string
}

// banJSON is a ban's value in {P}:ban and in events; times are Unix ms.
type banJSON struct {
	Until    int64  `json:"until"`
	Failures int    `json:"failures"`
	Bans     int    `json:"bans"`
	Manual   bool   `json:"manual"`
	At       int64  `json:"at"`
	Origin   string `json:"origin"`
}

func decodeBan(key, value string) (Ban, error) {
	p, err := netip.ParsePrefix(key)
	if err != nil {
		return Ban{}, fmt.Errorf("ban key %q: %w", key, err)
	}
	if err := validPrefix(p); err != nil {
		return Ban{}, err
	}
	var j banJSON
	if err := json.Unmarshal([]byte(value), &j); err != nil {
		return Ban{}, fmt.Errorf("ban %s: %w", key, err)
	}
	return Ban{Key: p, Until: time.UnixMilli(j.Until), Failures: j.Failures, Bans: j.Bans,
		Manual: j.Manual, At: time.UnixMilli(j.At), Origin: j.Origin}, nil
}

// Failures is what RecordFailure learned about a source.
type Failures struct {
	// Count is the fleet-wide number of failures within the window, this
	// one included (saturating at Config.MaxFailures).
	Count int
	// Bans is the source's fleet-wide ban history, for escalating the ban
	// that Count may now call for: the next ban is number Bans+1.
	Bans int
}

// RecordFailure counts one authentication failure from key toward the
// fleet-wide window, atomically, by the Redis server's clock.
func (s *Store) RecordFailure(ctx context.Context, key netip.Prefix, window time.Duration) (Failures, error) {
	if err := validPrefix(key); err != nil {
		return Failures{}, err
	}
	if window <= 0 {
		return Failures{}, fmt.Errorf("%w: window %s must be positive", ErrInvalid, window)
	}
	k := key.String()
	member := s.cfg.Instance + ":" + strconv.FormatUint(s.seq.Add(1), 36)
	var out Failures
	err := s.call(ctx, func(ctx context.Context) error {
		res, err := failureScript.Run(ctx, s.rdb, []string{s.key("fail:" + k), s.key("hist:" + k)},
			window.Milliseconds(), s.cfg.MaxFailures, member).Int64Slice()
		if err != nil {
			return err
		}
		if len(res) != 2 {
			return fmt.Errorf("failure script returned %d values", len(res))
		}
		out = Failures{Count: int(res[0]), Bans: int(res[1])}
		return nil
	})
	if err != nil {
		return Failures{}, fmt.Errorf("recording a failure of %s in redis: %w", key, err)
	}
	return out, nil
}

// FailureCounts returns the fleet-wide failures within window of each key,
// without recording one: what an authentication about to start still has
// left before a ban. Invalid keys (the zero Prefix) read 0.
func (s *Store) FailureCounts(ctx context.Context, window time.Duration, keys ...netip.Prefix) ([]int, error) {
	out := make([]int, len(keys))
	var names []string
	var at []int
	for i, k := range keys {
		if !k.IsValid() {
			continue
		}
		if err := validPrefix(k); err != nil {
			return nil, err
		}
		names = append(names, s.key("fail:"+k.String()))
		at = append(at, i)
	}
	if window <= 0 {
		return nil, fmt.Errorf("%w: window %s must be positive", ErrInvalid, window)
	}
	if len(names) == 0 {
		return out, nil
	}
	err := s.call(ctx, func(ctx context.Context) error {
		res, err := countScript.Run(ctx, s.rdb, names, window.Milliseconds()).Int64Slice()
		if err != nil {
			return err
		}
		if len(res) != len(names) {
			return fmt.Errorf("count script returned %d values for %d keys", len(res), len(names))
		}
		for j, n := range res {
			out[at[j]] = int(n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading failure counts from redis: %w", err)
	}
	return out, nil
}

// BanRequest is a ban to publish.
type BanRequest struct {
	Key netip.Prefix
	// Duration is the ban's length from now, by the Redis server's clock.
	// The caller computes it, escalated from Failures.Bans (or BanHistory)
	// plus one.
	Duration time.Duration
	Failures int
	Manual   bool
	// Clear lists more failure windows to reset with the ban (the jail's
	// host key when it bans the aggregate prefix, say); Key's own window
	// is always reset.
	Clear []netip.Prefix
}

// Ban publishes a ban to the fleet: it stores it until it ends, counts it
// in the fleet-wide history, resets the failure windows, and appends a ban
// event every watching gateway applies. An automatic ban never shortens
// (nor turns automatic) the fleet's ban in force on the same key; a manual
// one replaces it. The returned Ban is what the fleet now holds.
func (s *Store) Ban(ctx context.Context, r BanRequest) (Ban, error) {
	if err := validPrefix(r.Key); err != nil {
		return Ban{}, err
	}
	if r.Duration <= 0 {
		return Ban{}, fmt.Errorf("%w: ban duration %s must be positive", ErrInvalid, r.Duration)
	}
	keys := s.banKeys(r.Key)
	for _, c := range r.Clear {
		if err := validPrefix(c); err != nil {
			return Ban{}, err
		}
		keys = append(keys, s.key("fail:"+c.String()))
	}
	var out Ban
	err := s.call(ctx, func(ctx context.Context) error {
		v, err := banScript.Run(ctx, s.rdb, keys, r.Key.String(), r.Duration.Milliseconds(), r.Failures,
			boolArg(r.Manual), s.cfg.Instance, s.cfg.HistoryTTL.Milliseconds(), s.cfg.StreamMaxLen).Text()
		if err != nil {
			return err
		}
		out, err = decodeBan(r.Key.String(), v)
		return err
	})
	if err != nil {
		return Ban{}, fmt.Errorf("publishing the ban of %s to redis: %w", r.Key, err)
	}
	return out, nil
}

// Unban lifts the fleet's ban on exactly key, resets its failure window,
// and appends an unban event, which goes out even if Redis held no such
// ban (a gateway may hold one it made while Redis was away). It reports
// whether Redis held one. The ban history is kept, as the jail keeps it.
func (s *Store) Unban(ctx context.Context, key netip.Prefix) (bool, error) {
	if err := validPrefix(key); err != nil {
		return false, err
	}
	var had bool
	err := s.call(ctx, func(ctx context.Context) error {
		n, err := unbanScript.Run(ctx, s.rdb, s.banKeys(key), key.String(), s.cfg.Instance,
			s.cfg.TombstoneTTL.Milliseconds(), s.cfg.StreamMaxLen).Int64()
		had = n > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("publishing the unban of %s to redis: %w", key, err)
	}
	return had, nil
}

// BanHistory returns key's fleet-wide ban count (0 when it has none or it
// expired), for escalating a manual ban.
func (s *Store) BanHistory(ctx context.Context, key netip.Prefix) (int, error) {
	if err := validPrefix(key); err != nil {
		return 0, err
	}
	var n int
	err := s.call(ctx, func(ctx context.Context) error {
		v, err := s.rdb.Get(ctx, s.key("hist:"+key.String())).Int()
		if err == redis.Nil {
			return nil
		}
		n = v
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("reading the ban history of %s from redis: %w", key, err)
	}
	return n, nil
}

// banKeys is the KEYS layout of the ban scripts (see scripts.go).
func (s *Store) banKeys(key netip.Prefix) []string {
	k := key.String()
	return []string{s.key("ban"), s.key("ban:exp"), s.key("hist:" + k), s.key("tomb"),
		s.key("tomb:exp"), s.key("events"), s.key("fail:" + k)}
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
