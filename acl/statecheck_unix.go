//go:build unix

package acl

import (
	"errors"
	"os"
	"syscall"

	berrors "go.etcd.io/bbolt/errors"
)

// precheckState runs checkFreelist on the state file at path before bbolt
// opens it. Damage found while another process holds the file's lock (a
// running pgwarden, mid-write) is not damage: it answers like bbolt's own
// lock timeout, so the file is never moved aside from under its owner.
func precheckState(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return nil // bbolt's open reports it
	}
	defer f.Close()
	damage := checkFreelist(f)
	if damage == nil {
		return nil
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return berrors.ErrTimeout
		}
		return damage
	}
	defer func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }()
	// Read again under the lock: a writer may have finished meanwhile.
	return checkFreelist(f)
}
