package acl

import (
	"errors"
	"fmt"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

var (
	// ErrNoAllowlist is returned when the allowlist has no entry; the
	// gateway fails closed rather than admitting everyone or no one by
	// accident.
	ErrNoAllowlist error = fielderr.Errorf("no allowlist: add %s CIDR (e.g. %s 10.0.0.0/8)", FieldAllow, FieldAllow)
	// ErrInvalidEntry is wrapped by every EntryError.
	ErrInvalidEntry = errors.New("invalid address entry")
	// ErrNotAllowed labels accept-time rejections of peers outside the
	// allowlist (logs and metrics only; never sent to a peer).
	ErrNotAllowed = errors.New("source not in allowlist")
	// ErrBanned labels accept-time rejections of banned peers (logs and
	// metrics only; never sent to a peer).
	ErrBanned = errors.New("source banned")
	// ErrNotBanned is wrapped by Jail.Unban when there is no active ban.
	ErrNotBanned = errors.New("not banned")
	// ErrStateLocked is wrapped when another process holds the ban state file.
	ErrStateLocked = errors.New("ban state file is locked by another process")
	// ErrJailClosed is returned by manual operations after Close.
	ErrJailClosed = errors.New("jail closed")
)

// EntryError reports one rejected list entry: the field it came from, the
// entry as written, what a template rendered (if it was one), why it was
// rejected and, where there is one, the fix.
type EntryError struct {
	Field    fielderr.Field // e.g. FieldAllow
	Entry    string         // the entry as the operator wrote it
	Rendered string         // the token a template rendered; "" for literals
	Reason   string         // what is wrong, lowercase
	Fix      string         // how to fix it, e.g. "write 10.0.0.1"; may be ""
	Err      error          // underlying cause, e.g. a template error; may be nil
}

// Error formats as `allowlist "010.0.0.1": leading zeros are ambiguous;
// write 10.0.0.1`, the field named by its own name.
func (e *EntryError) Error() string { return e.Text(nil) }

// Text is Error with the field named by n (fielderr.Renderer): with the
// command line's names, `--allow "010.0.0.1": ...`.
func (e *EntryError) Text(n fielderr.Names) string {
	msg := fmt.Sprintf("%s %q", n.Of(e.Field), e.Entry)
	if e.Rendered != "" {
		msg += fmt.Sprintf(" rendered %q", e.Rendered)
	}
	msg += ": " + e.Reason
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.Fix != "" {
		msg += "; " + e.Fix
	}
	return msg
}

// Unwrap lets errors.Is match ErrInvalidEntry and the underlying cause.
func (e *EntryError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalidEntry, e.Err}
	}
	return []error{ErrInvalidEntry}
}
