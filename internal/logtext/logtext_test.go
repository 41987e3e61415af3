package logtext

import (
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestEscape(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                     "",
		"alice":                "alice",
		"zoë":                  "zoë",
		`dom\user`:             `dom\user`, // valid UTF-8 is left alone
		"al\xffice":            `al\xffice`,
		"al\xfeice":            `al\xfeice`,
		"\x00\x80":             "\x00\\x80",
		"a\\b\xc3":             `a\\b\xc3`,     // a truncated é; the backslash doubled
		"\xed\xa0\x80":         `\xed\xa0\x80`, // a UTF-16 surrogate is not UTF-8
		"ok\xe2\x82\xacok\x01": "ok€ok\x01",
	} {
		assert.Equal(t, want, Escape(in), "%q", in)
	}
}

func FuzzEscape(f *testing.F) {
	f.Add("al\xffice")
	f.Add(`a\b`)
	f.Fuzz(func(t *testing.T, s string) {
		out := Escape(s)
		if !isValid(out) {
			t.Fatalf("Escape(%q) = %q is not valid UTF-8", s, out)
		}
		if isValid(s) && out != s {
			t.Fatalf("valid %q changed to %q", s, out)
		}
		if !isValid(s) && unescape(out) != s {
			t.Fatalf("Escape(%q) = %q does not decode back", s, out)
		}
	})
}

func isValid(s string) bool { return utf8.ValidString(s) }

// unescape reverses Escape for a string that was escaped.
func unescape(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		if s[i+1] == '\\' {
			out = append(out, '\\')
			i++
			continue
		}
		n, _ := strconv.ParseUint(s[i+2:i+4], 16, 8)
		out = append(out, byte(n))
		i += 3
	}
	return string(out)
}
