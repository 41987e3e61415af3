package grants

import "errors"

var (
	// ErrFull is returned by Add when Config.MaxGrants grants are active.
	ErrFull = errors.New("too many active grants")
	// ErrNotFound is returned by Revoke and Get when nothing matches.
	ErrNotFound = errors.New("no such grant")
	// ErrBadTTL is wrapped when a requested TTL is not positive or is
	// shorter than MinTTL.
	ErrBadTTL = errors.New("invalid grant ttl")
	// ErrBadRequest is wrapped by Add for a request that is not valid
	// (no source, an empty user name, ...).
	ErrBadRequest = errors.New("invalid grant request")
	// ErrClosed is returned by Add and Revoke after Close.
	ErrClosed = errors.New("grant registry closed")
)

// NotPermittedError is Permits' refusal. Its text names the rule that
// made the grant and the user or database refused, never the grant id:
// it goes to a client that has not authenticated yet.
type NotPermittedError struct {
	Rule string // the grant's rule, e.g. `oidc rule "deploy"` or "admin grant"
	What string // "user" or "database"
	Name string // the refused name, as the client sent it
}

// Error is the public text, e.g.
// `database "postgres" is not permitted by the access grant for this address (oidc rule "deploy")`.
func (e *NotPermittedError) Error() string {
	return e.What + " " + quote(e.Name) + " is not permitted by the access grant for this address (" + e.Rule + ")"
}
