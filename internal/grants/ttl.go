package grants

import (
	"fmt"
	"time"
)

// MinTTL is the shortest grant: anything shorter would expire before a
// client could use it, and a zero or negative TTL is a mistake.
const MinTTL = time.Second

// EffectiveTTL is how long a grant lasts: the requested TTL capped by every
// positive cap (a rule's max-ttl, --grant-max-ttl). requested 0 means "as
// long as allowed", the smallest cap; a negative request, or one below
// MinTTL, is an error wrapping ErrBadTTL, and so is a request of 0 with no
// cap at all.
func EffectiveTTL(requested time.Duration, caps ...time.Duration) (time.Duration, error) {
	if requested < 0 || (requested > 0 && requested < MinTTL) {
		return 0, fmt.Errorf("%w: %s: want a duration of at least %s", ErrBadTTL, requested, MinTTL)
	}
	ttl := requested
	for _, c := range caps {
		if c > 0 && (ttl == 0 || c < ttl) {
			ttl = c
		}
	}
	if ttl == 0 {
		return 0, fmt.Errorf("%w: no ttl requested and no maximum configured", ErrBadTTL)
	}
	if ttl < MinTTL {
		return 0, fmt.Errorf("%w: the maximum %s is shorter than %s", ErrBadTTL, ttl, MinTTL)
	}
	return ttl, nil
}
