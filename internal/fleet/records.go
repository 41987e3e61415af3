package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Record is a generic expiring item shared by the fleet; grants are
// records of kind "grant". Data is the owner package's JSON, carried
// verbatim.
type Record struct {
	// Kind names the record type: 1 to 32 of [a-z0-9_-].
	Kind string
	// ID identifies the record within its kind: 1 to 256 bytes.
	ID string
	// Until is when the record expires everywhere.
	Until time.Time
	// Data is the record's content, valid JSON of at most
	// Config.MaxRecordBytes bytes.
	Data json.RawMessage
	// At is when the record was last changed (this gateway's clock when it
	// is put); Origin is the gateway that put it.
	At     time.Time
	Origin string
}

// RecordRef names a record.
type RecordRef struct {
	Kind, ID string
}

func (r RecordRef) field() string { return r.Kind + "/" + r.ID }

// String is "kind/id".
func (r RecordRef) String() string { return r.field() }

// recordJSON is a record's value in {P}:rec and in events.
type recordJSON struct {
	Until  int64           `json:"until"`
	At     int64           `json:"at"`
	Origin string          `json:"origin"`
	Data   json.RawMessage `json:"data"`
}

var kindRE = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)

func (s *Store) checkRecord(r Record) error {
	if err := checkRef(RecordRef{r.Kind, r.ID}); err != nil {
		return err
	}
	if len(r.Data) > s.cfg.MaxRecordBytes {
		return fmt.Errorf("%w: record %s/%s has %d bytes of data, more than %d", ErrInvalid, r.Kind, r.ID, len(r.Data), s.cfg.MaxRecordBytes)
	}
	if !json.Valid(r.Data) {
		return fmt.Errorf("%w: record %s/%s data is not valid JSON", ErrInvalid, r.Kind, r.ID)
	}
	return nil
}

func checkRef(r RecordRef) error {
	if !kindRE.MatchString(r.Kind) {
		return fmt.Errorf("%w: record kind %q: use 1 to 32 of a-z, 0-9, '_', '-'", ErrInvalid, r.Kind)
	}
	if r.ID == "" || len(r.ID) > 256 {
		return fmt.Errorf("%w: record id must have 1 to 256 bytes (got %d)", ErrInvalid, len(r.ID))
	}
	return nil
}

func decodeRecord(field, value string) (Record, error) {
	kind, id, ok := strings.Cut(field, "/")
	if !ok || checkRef(RecordRef{kind, id}) != nil {
		return Record{}, fmt.Errorf("record field %q is not kind/id", field)
	}
	var j recordJSON
	if err := json.Unmarshal([]byte(value), &j); err != nil {
		return Record{}, fmt.Errorf("record %s: %w", field, err)
	}
	return Record{Kind: kind, ID: id, Until: time.UnixMilli(j.Until), Data: j.Data,
		At: time.UnixMilli(j.At), Origin: j.Origin}, nil
}

// PutResult says what PutRecord did.
type PutResult string

// The outcomes of PutRecord.
const (
	RecordAdded    PutResult = "added"    // there was no such record
	RecordReplaced PutResult = "replaced" // it replaced the fleet's copy (an extension, say)
)

// PutRecord stores r (replacing any record with the same kind and id) until
// r.Until and appends a put event. At and Origin are set here.
func (s *Store) PutRecord(ctx context.Context, r Record) (PutResult, error) {
	r.At, r.Origin = s.cfg.Now(), s.cfg.Instance
	status, _, err := s.putRecord(ctx, r, "put")
	if err != nil {
		return "", fmt.Errorf("publishing record %s/%s to redis: %w", r.Kind, r.ID, err)
	}
	if status == "expired" {
		return "", fmt.Errorf("%w: record %s/%s expired at %s", ErrInvalid, r.Kind, r.ID, r.Until)
	}
	return PutResult(status), nil
}

// putRecord runs putRecordScript in mode "put" or "push".
func (s *Store) putRecord(ctx context.Context, r Record, mode string) (status, old string, err error) {
	if err := s.checkRecord(r); err != nil {
		return "", "", err
	}
	value, err := json.Marshal(recordJSON{Until: r.Until.UnixMilli(), At: r.At.UnixMilli(), Origin: r.Origin, Data: r.Data})
	if err != nil {
		return "", "", fmt.Errorf("encoding record %s/%s: %w", r.Kind, r.ID, err)
	}
	err = s.call(ctx, func(ctx context.Context) error {
		res, err := putRecordScript.Run(ctx, s.rdb, s.recKeys(), RecordRef{r.Kind, r.ID}.field(),
			r.Until.UnixMilli(), value, r.Origin, s.cfg.StreamMaxLen, r.At.UnixMilli(), mode).StringSlice()
		if err != nil {
			return err
		}
		if len(res) != 2 {
			return fmt.Errorf("record script returned %d values", len(res))
		}
		status, old = res[0], res[1]
		return nil
	})
	return status, old, err
}

// RevokeRecord removes a record fleet-wide and appends a revoke event,
// which goes out even if Redis held no such record. It reports whether
// Redis held one.
func (s *Store) RevokeRecord(ctx context.Context, ref RecordRef) (bool, error) {
	return s.RevokeRecordWith(ctx, ref, nil)
}

// RevokeRecordWith is RevokeRecord with a note for the other gateways (how
// to revoke, say): JSON of at most Config.MaxRecordBytes, delivered as the
// revoke event's Record.Data. The note is not stored.
func (s *Store) RevokeRecordWith(ctx context.Context, ref RecordRef, note json.RawMessage) (bool, error) {
	if err := checkRef(ref); err != nil {
		return false, err
	}
	if len(note) > 0 && (len(note) > s.cfg.MaxRecordBytes || !json.Valid(note)) {
		return false, fmt.Errorf("%w: the revoke note of %s is not JSON of at most %d bytes", ErrInvalid, ref, s.cfg.MaxRecordBytes)
	}
	var had bool
	err := s.call(ctx, func(ctx context.Context) error {
		n, err := revokeRecordScript.Run(ctx, s.rdb, s.recKeys(), ref.field(), s.cfg.Instance,
			s.cfg.TombstoneTTL.Milliseconds(), s.cfg.StreamMaxLen, string(note)).Int64()
		had = n > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("revoking record %s in redis: %w", ref, err)
	}
	return had, nil
}

// recKeys is the KEYS layout of the record scripts (see scripts.go).
func (s *Store) recKeys() []string {
	return []string{s.key("rec"), s.key("rec:exp"), s.key("tomb"), s.key("tomb:exp"), s.key("events")}
}
