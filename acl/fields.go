package acl

import "github.com/pgwarden/pgwarden/internal/fielderr"

// The configuration fields this package's errors name. A caller renders
// them with its own names (fielderr.Render): the command line's are its
// flags.
var (
	// FieldAllow is the list given to ParseAllowlist.
	FieldAllow = field("allowlist")
	// FieldAddress is an address or prefix given to Jail.Ban or Jail.Unban.
	FieldAddress = field("address")
	// The JailConfig fields.
	FieldIgnore     = field("Ignore")
	FieldMaxRetry   = field("MaxRetry")
	FieldFindTime   = field("FindTime")
	FieldBanTime    = field("BanTime")
	FieldTimeFactor = field("TimeFactor")
	FieldMaxTime    = field("MaxTime")
	FieldIPv6Prefix = field("IPv6Prefix")
	FieldMaxTracked = field("MaxTracked")
)

func field(name string) fielderr.Field { return fielderr.Field{Pkg: "acl", Name: name} }
