package grants

import (
	"go.uber.org/zap"
)

// ChangeKind says what happened to a grant.
type ChangeKind string

// The changes a Registry makes.
const (
	ChangeCreated  ChangeKind = "created"
	ChangeExtended ChangeKind = "extended"
	ChangeRevoked  ChangeKind = "revoked"
	ChangeExpired  ChangeKind = "expired"
)

// Change is one change of the active grants, as Config.OnChange sees it.
type Change struct {
	Kind ChangeKind
	// Grant is the grant after the change (for Revoked and Expired, as it
	// was when it ended).
	Grant Grant
	// KeepSessions is set on a revocation that leaves the sessions the
	// grant admitted running.
	KeepSessions bool
	// By names who revoked (RevokeOptions.By); "" for other kinds.
	By string
	// Remote is set for a change another gateway made (Apply, or Revoke
	// with RevokeOptions.Remote): whoever shares changes with the other
	// gateways skips it.
	Remote bool
}

// auditMessage is each kind's audit line.
var auditMessage = map[ChangeKind]string{
	ChangeCreated:  "grant created",
	ChangeExtended: "grant extended",
	ChangeRevoked:  "grant revoked",
	ChangeExpired:  "grant expired",
}

// announce is the one place every change of the active grants goes
// through once it is in memory and in the Store, never under mu: its
// audit line, then OnExpire or OnRevoke (the gateway ends sessions there),
// then OnChange (metrics, and state shared with other gateways). Whatever
// adds, extends, revokes or expires a grant calls it, so an observer sees
// every change exactly once and in the order they were made per grant.
func (r *Registry) announce(c Change, extra ...zap.Field) {
	switch c.Kind {
	case ChangeRevoked:
		extra = append(extra, zap.String("by", c.By), zap.Bool("keep_sessions", c.KeepSessions))
	}
	r.audit(auditMessage[c.Kind], c.Grant, extra...)
	switch c.Kind {
	case ChangeExpired:
		if r.cfg.OnExpire != nil {
			r.cfg.OnExpire(c.Grant.clone())
		}
	case ChangeRevoked:
		if r.cfg.OnRevoke != nil {
			r.cfg.OnRevoke(c.Grant.clone(), c.KeepSessions)
		}
	}
	if r.cfg.OnChange != nil {
		c.Grant = c.Grant.clone()
		r.cfg.OnChange(c)
	}
}
