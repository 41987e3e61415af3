package acl

// Failure describes one failed authentication for the log. Only the peer
// address (passed separately) is ever used as a key; these strings come
// from the client and are logged as structured fields, never parsed.
type Failure struct {
	User     string
	Database string
	SQLState string
	// Reason says why a failure without a SQLSTATE counts, e.g.
	// "timeout" for a client that stopped answering after postgres was
	// contacted; "" for a failure postgres reported.
	Reason string
}

// CountsAsFailure reports whether an upstream SQLSTATE sent before
// AuthenticationOk is a credential failure worth counting towards a ban:
// 28P01 invalid_password (password, md5, scram, and SCRAM's mock exchange
// for unknown roles) and 28000 invalid_authorization_specification (no
// pg_hba entry, reject lines, other methods). Everything else (53300 too
// many connections, 57P03 starting up, 08P01 protocol errors, 3D000 after
// AuthenticationOk) is not the client guessing credentials.
func CountsAsFailure(sqlstate string) bool {
	return sqlstate == "28P01" || sqlstate == "28000"
}
