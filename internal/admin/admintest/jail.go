// Package admintest is a fake ban jail for tests of the admin endpoint and
// of its command-line client.
package admintest

import (
	"fmt"
	"sync"
	"time"

	"github.com/pgwarden/pgwarden/acl"
)

// Now is the fake jail's clock.
var Now = time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)

// Jail is an in-memory admin.BanStore that records the bans asked for.
type Jail struct {
	mu      sync.Mutex
	bans    []acl.BanInfo
	BanErr  error         // returned by Ban when set; set it before serving
	lastFor time.Duration // d of the last Ban
	calls   []string      // "ban IP", "unban IP"
}

// NewJail returns a jail with no bans.
func NewJail() *Jail { return &Jail{} }

// Set replaces the bans.
func (j *Jail) Set(bans ...acl.BanInfo) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.bans = append([]acl.BanInfo(nil), bans...) // the caller's slice is shared between subtests
}

// List returns the bans.
func (j *Jail) List() []acl.BanInfo {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]acl.BanInfo(nil), j.bans...)
}

// ActiveBans counts them.
func (j *Jail) ActiveBans() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.bans)
}

// Ban bans for d, or for 10m × 2^(bans so far) when d is 0, as the jail's
// escalation would.
func (j *Jail) Ban(ip string, d time.Duration) (acl.BanInfo, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.calls = append(j.calls, "ban "+ip)
	j.lastFor = d
	if j.BanErr != nil {
		return acl.BanInfo{}, j.BanErr
	}
	n := 1
	for i, b := range j.bans {
		if b.IP == ip {
			n = b.Bans + 1
			j.bans = append(j.bans[:i], j.bans[i+1:]...)
			break
		}
	}
	if d == 0 {
		d = 10 * time.Minute << (n - 1)
	}
	info := acl.BanInfo{IP: ip, Until: Now.Add(d), Bans: n}
	j.bans = append(j.bans, info)
	return info, nil
}

// Unban lifts ip's ban.
func (j *Jail) Unban(ip string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.calls = append(j.calls, "unban "+ip)
	for i, b := range j.bans {
		if b.IP == ip {
			j.bans = append(j.bans[:i], j.bans[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("unbanning %s: %w", ip, acl.ErrNotBanned)
}

// LastCall is the last ban or unban asked for, and the ban's length.
func (j *Jail) LastCall() (string, time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.calls) == 0 {
		return "", 0
	}
	return j.calls[len(j.calls)-1], j.lastFor
}
