package certs

import "github.com/pgwarden/pgwarden/internal/fielderr"

// The configuration fields this package's errors name. A caller renders
// them with its own names (fielderr.Render): serve's flags for the server
// side, connect's libpq-style ones for a client certificate, the certs
// commands' flags for the CA operations.
var (
	// Loader: the certificate chain and its key.
	FieldCert = field("certificate file")
	FieldKey  = field("key file")
	// Policy.
	FieldMinVersion = field("minimum TLS version")
	FieldClientCA   = field("client CA file")
	FieldAllowCN    = field("allowed CN")
	FieldAllowSAN   = field("allowed SAN")
	FieldMapUser    = field("user map entry")
	FieldMapFile    = field("user map file")
	FieldClientCRL  = field("client CRL file")
	// The CA operations (InitCA, IssueClient, RenewServer, Revoke,
	// RefreshCRL).
	FieldDir        = field("CA directory")
	FieldHost       = field("host")
	FieldClient     = field("client name")
	FieldTTL        = field("TTL")
	FieldReason     = field("reason")
	FieldNextUpdate = field("next update")
	FieldForce      = field("force")
)

func field(name string) fielderr.Field { return fielderr.Field{Pkg: "certs", Name: name} }

var errorf = fielderr.Errorf
