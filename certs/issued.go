package certs

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// IssuedName is the record of client certificates `certs issue` made, in
// the CA directory: one JSON object per line, appended, so `certs revoke
// NAME` can find the serial numbers issued under a name.
const IssuedName = "issued.jsonl"

// maxIssuedLine bounds one line of the record; real lines are ~150 bytes.
const maxIssuedLine = 64 << 10

// issuedRecord is one line of IssuedName.
type issuedRecord struct {
	Serial   string    `json:"serial"` // lowercase hex, as Text(16)
	Name     string    `json:"name"`
	NotAfter time.Time `json:"not_after"`
	Issued   time.Time `json:"issued"`
}

// recordIssued appends r to DIR/issued.jsonl. One write(2) of a whole line
// with O_APPEND, so two `certs issue` running at once (parallel CI jobs)
// never interleave their lines.
func recordIssued(dir string, r issuedRecord) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding the issued-certificate record: %w", err)
	}
	path := filepath.Join(dir, IssuedName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("recording the certificate in %s: %w", path, err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		_ = f.Close()
		return fmt.Errorf("recording the certificate in %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("recording the certificate in %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("recording the certificate in %s: %w", path, err)
	}
	return nil
}

// readIssued reads DIR/issued.jsonl; a missing file is an empty record.
func readIssued(dir string) ([]issuedRecord, error) {
	path := filepath.Join(dir, IssuedName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	var out []issuedRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), maxIssuedLine)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r issuedRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if _, ok := parseSerial(r.Serial); !ok || r.Name == "" {
			return nil, fmt.Errorf("%s:%d: want a serial number and a name", path, n)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}
