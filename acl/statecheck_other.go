//go:build !unix

package acl

// precheckState is a no-op where flock is not available: bbolt's own
// checks (and the recovered panics) are all there is.
func precheckState(string) error { return nil }
