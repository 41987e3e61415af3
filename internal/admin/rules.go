package admin

import (
	"net/http"

	"github.com/pgwarden/pgwarden/internal/rulehits"
)

// registerRules serves GET /rules: per route and admission rule (an
// allowlist entry, a grant), the connections it admitted and the last
// time it did, for pruning entries nobody uses (pgwarden rules --stale).
func (s *Server) registerRules(mux *http.ServeMux) {
	if s.cfg.Rules == nil {
		return
	}
	mux.HandleFunc("GET /rules", func(w http.ResponseWriter, _ *http.Request) {
		rules := s.cfg.Rules()
		if rules == nil {
			rules = []rulehits.Hits{} // [] rather than null
		}
		writeJSON(w, http.StatusOK, rules)
	})
}

// Rules returns the hit counts of every admission rule and the endpoint's
// JSON as it came.
func (c *Client) Rules() ([]rulehits.Hits, []byte, error) {
	var rules []rulehits.Hits
	data, err := c.do(http.MethodGet, "/rules", nil, http.StatusOK, &rules)
	return rules, data, err
}
