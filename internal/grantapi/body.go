package grantapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pgwarden/pgwarden/internal/grants"
)

// MaxBodyBytes caps the request body; {"ttl": "20m"} is 15 bytes.
const MaxBodyBytes = 16 << 10

// errBodyTooLarge marks a body over MaxBodyBytes (413).
var errBodyTooLarge = errors.New("request body larger than 16 KiB")

// readBody reads at most MaxBodyBytes of r.
func readBody(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %w", err)
	}
	if len(data) > MaxBodyBytes {
		return nil, errBodyTooLarge
	}
	return data, nil
}

// parseBody reads the optional {"ttl": "DUR"} strictly: an empty body (or
// only whitespace) asks for the longest grant allowed; anything else must
// be one JSON object whose only key is "ttl", given once, with a string
// value that is a positive Go duration, and nothing after it. A lenient
// parser would let "ttl" appear twice and two layers (a proxy, this code)
// read different values. The error texts quote nothing the client sent
// beyond a short duration text.
func parseBody(data []byte) (time.Duration, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return 0, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return 0, errors.New(`the body must be a JSON object such as {"ttl": "20m"}, or empty`)
	}
	var ttlText string
	seen := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return 0, errors.New("the body is not valid JSON")
		}
		key, _ := tok.(string)
		switch {
		case key != "ttl":
			return 0, errors.New(`unknown key in the body: only "ttl" is accepted`)
		case seen:
			return 0, errors.New(`"ttl" is given twice`)
		}
		seen = true
		v, err := dec.Token()
		if err != nil {
			return 0, errors.New("the body is not valid JSON")
		}
		s, ok := v.(string)
		if !ok {
			return 0, errors.New(`"ttl" must be a string such as "20m"`)
		}
		ttlText = s
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return 0, errors.New("the body is not valid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return 0, errors.New("unexpected data after the JSON object")
	}
	if !seen {
		return 0, nil
	}
	d, err := time.ParseDuration(ttlText)
	if err != nil || d < grants.MinTTL {
		if len(ttlText) > 32 {
			ttlText = ttlText[:32] + "..."
		}
		return 0, fmt.Errorf(`"ttl" %q: want a duration of at least %s, such as "20m"`, ttlText, grants.MinTTL)
	}
	return d, nil
}
