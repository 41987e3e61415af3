package crowdsec

import (
	"bytes"
	"testing"
)

// FuzzDecodeStream feeds arbitrary bodies to the stream decoder: no panic,
// and the bounds hold whatever the body says.
func FuzzDecodeStream(f *testing.F) {
	for _, s := range []string{
		`{"new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h"}], "deleted": null}`,
		`{"deleted": [{"id": 2}], "new": [{"id": 2, "type": "ban", "scope": "Range", "value": "10.0.0.0/8", "duration": "3h59m58.123s"}]}`,
		`{"new": null, "deleted": null}`,
		`{"new": [{"id": 3, "type": "ban", "scope": "range", "value": "::ffff:1.2.3.0/120", "duration": "-1s"}]}`,
		`{"x": [[[{}]]], "new": []}`,
		`{"new": [{"id": 1`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	const max = 4
	f.Fuzz(func(t *testing.T, in []byte) {
		sr, err := decodeStream(bytes.NewReader(in), max)
		if err != nil {
			return
		}
		if len(sr.added) > max || len(sr.deleted) > 2*max {
			t.Fatalf("bounds broken: %d added, %d deleted", len(sr.added), len(sr.deleted))
		}
		for _, a := range sr.added {
			if !a.prefix.IsValid() || a.prefix != a.prefix.Masked() || a.duration <= 0 || a.id == 0 || a.prefix.Addr().Is4In6() {
				t.Fatalf("bad decision kept: %+v", a)
			}
		}
	})
}
