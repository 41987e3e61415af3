package fleet

import "errors"

var (
	// ErrUnavailable is returned at once, without touching the network,
	// while Redis is known to be down (see Store.Up).
	ErrUnavailable = errors.New("redis unavailable")
	// ErrConfig is wrapped by every configuration error New returns.
	ErrConfig = errors.New("invalid fleet configuration")
	// ErrInvalid is wrapped when an argument cannot be stored (a key that
	// is not a masked prefix, an oversized record).
	ErrInvalid = errors.New("invalid argument")
)
