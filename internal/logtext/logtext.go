// Package logtext renders client-supplied strings for log fields so that the
// log keeps their exact bytes.
package logtext

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Escape returns s unchanged when it is valid UTF-8. Otherwise every byte
// that is not part of a valid UTF-8 sequence becomes \xNN and every
// backslash \\, so the field still names exactly what the client sent (and
// what postgres logs) and can be decoded back to it. The JSON encoder would
// otherwise replace each invalid byte with U+FFFD, and "al\xffice" and
// "al\xfeice" would both log as "al�ice".
func Escape(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\x`)
			if s[i] < 0x10 {
				b.WriteByte('0')
			}
			b.WriteString(strconv.FormatUint(uint64(s[i]), 16))
		case r == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
