package metrics

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grants"
)

type fixedGrants int

func (n fixedGrants) Active() int { return int(n) }

// TestGrantMetrics: grants made count by via (extensions and ends do not),
// every endpoint outcome has its series from the start, and the gauge
// reads the registry at scrape time.
func TestGrantMetrics(t *testing.T) {
	t.Parallel()
	m := New()
	out := scrape(t, m)
	for _, want := range []string{
		`pgwarden_grants_active 0`,
		`pgwarden_grants_total{via="admin"} 0`,
		`pgwarden_grants_total{via="oidc"} 0`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("fresh registry: missing %q", want)
		}
	}
	for _, o := range grantapi.Outcomes() {
		if want := fmt.Sprintf(`pgwarden_grant_requests_total{outcome=%q} 0`, o); !strings.Contains(out, want+"\n") {
			t.Errorf("fresh registry: missing %q", want)
		}
	}

	m.SetGrantStore(fixedGrants(3))
	for _, c := range []grants.Change{
		{Kind: grants.ChangeCreated, Grant: grants.Grant{Via: grants.ViaAdmin}},
		{Kind: grants.ChangeCreated, Grant: grants.Grant{Via: grants.ViaOIDC}},
		{Kind: grants.ChangeCreated, Grant: grants.Grant{Via: grants.ViaOIDC}},
		{Kind: grants.ChangeExtended, Grant: grants.Grant{Via: grants.ViaOIDC}},
		{Kind: grants.ChangeRevoked, Grant: grants.Grant{Via: grants.ViaAdmin}},
		{Kind: grants.ChangeExpired, Grant: grants.Grant{Via: grants.ViaOIDC}},
		{Kind: grants.ChangeCreated, Grant: grants.Grant{Via: "forged\nlabel"}},
	} {
		m.OnGrantChange(c)
	}
	m.OnGrantRequest(grantapi.OutcomeBadToken)
	m.OnGrantRequest(grantapi.OutcomeBadToken)
	m.OnGrantRequest(grantapi.OutcomeGranted)
	out = scrape(t, m)
	for _, want := range []string{
		`pgwarden_grants_active 3`,
		`pgwarden_grants_total{via="admin"} 1`,
		`pgwarden_grants_total{via="oidc"} 2`,
		`pgwarden_grants_total{via="other"} 1`,
		`pgwarden_grant_requests_total{outcome="bad_token"} 2`,
		`pgwarden_grant_requests_total{outcome="granted"} 1`,
		`pgwarden_grant_requests_total{outcome="no_rule"} 0`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
}
