package grants

import (
	"fmt"
	"strings"
	"unicode"
)

// Bounds on the free-text fields of a grant, which end up in every audit
// line and in the state file.
const (
	maxReasonLen    = 1024
	maxCreatedByLen = 1024
	maxRouteLen     = 128
	maxClaims       = 64
)

// checkRequest validates the free-form fields of req and returns its
// normalised limits.
func (r *Registry) checkRequest(req *AddRequest) (users, databases []string, err error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, a...))
	}
	switch {
	case !req.Source.IsValid():
		return nil, nil, bad("no source")
	case req.Source != req.Source.Masked() || req.Source.Addr().Is4In6() || req.Source.Addr().Zone() != "":
		return nil, nil, bad("source %s is not normalised (use ParseSource)", req.Source)
	case req.Source.Bits() == 0:
		return nil, nil, bad("a grant for every address is an allowlist entry")
	case strings.TrimSpace(req.Reason) == "":
		return nil, nil, bad("a reason is required")
	case len(req.Reason) > maxReasonLen:
		return nil, nil, bad("reason is longer than %d bytes", maxReasonLen)
	case !printable(req.Reason):
		return nil, nil, bad("reason contains control characters")
	case req.CreatedBy == "":
		return nil, nil, bad("created_by is required")
	case len(req.CreatedBy) > maxCreatedByLen || !printable(req.CreatedBy):
		return nil, nil, bad("created_by is longer than %d bytes or not printable", maxCreatedByLen)
	case len(req.Route) > maxRouteLen || !printable(req.Route):
		return nil, nil, bad("route name is longer than %d bytes or not printable", maxRouteLen)
	case req.Via != ViaAdmin && req.Via != ViaOIDC:
		return nil, nil, bad("via %q is neither %q nor %q", req.Via, ViaAdmin, ViaOIDC)
	case len(req.Claims) > maxClaims:
		return nil, nil, bad("more than %d claims", maxClaims)
	}
	if users, err = checkNames("user", req.Users); err != nil {
		return nil, nil, err
	}
	if databases, err = checkNames("database", req.Databases); err != nil {
		return nil, nil, err
	}
	if req.Rule == "" {
		req.Rule = req.Via + " grant"
	}
	return users, databases, nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	for _, c := range s {
		if c == '\uFFFD' || unicode.IsControl(c) {
			return false
		}
	}
	return true
}

// revokeMatcher parses a Revoke target: a grant id or a source.
func revokeMatcher(target string) (func(*Grant) bool, error) {
	target = strings.TrimSpace(target)
	if strings.HasPrefix(target, "g-") {
		return func(g *Grant) bool { return g.ID == target }, nil
	}
	src, err := ParseSource(target)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is neither a grant id (g-…) nor a source: %w", ErrBadRequest, target, err)
	}
	return func(g *Grant) bool { return g.Source == src }, nil
}
