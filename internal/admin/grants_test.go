package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/internal/admin/admintest"
	"github.com/pgwarden/pgwarden/internal/fakeclock"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/metrics"
)

// grantsAdmin is an admin endpoint over a real registry on a fake clock,
// recording revocations.
type grantsAdmin struct {
	srv   *httptest.Server
	reg   *grants.Registry
	clock *fakeclock.Clock

	mu      sync.Mutex
	revoked []string // "ID keep=BOOL"
}

func newGrantsAdmin(t *testing.T, maxGrants int) *grantsAdmin {
	t.Helper()
	a := &grantsAdmin{clock: fakeclock.New(admintest.Now)}
	reg, err := grants.New(grants.Config{
		MaxTTL: 12 * time.Hour, MaxGrants: maxGrants, Now: a.clock.Now, SweepInterval: time.Hour,
		OnRevoke: func(g grants.Grant, keep bool) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.revoked = append(a.revoked, g.Source.String()+" keep="+map[bool]string{true: "true", false: "false"}[keep])
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = reg.Close() })
	a.reg = reg
	s, err := New(Config{Addr: "127.0.0.1:0", Bans: admintest.NewJail(), Ready: func() error { return nil },
		Registry: metrics.New().Registry(), Grants: reg, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	a.srv = httptest.NewServer(s.Handler())
	t.Cleanup(a.srv.Close)
	return a
}

func (a *grantsAdmin) Revoked() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.revoked...)
}

func (a *grantsAdmin) do(t *testing.T, method, path, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(data)
}

func TestGrantsAPI(t *testing.T) {
	t.Parallel()
	a := newGrantsAdmin(t, 2)
	const ct = "application/json"

	code, body := a.do(t, "GET", "/grants", "", "")
	require.Equal(t, 200, code)
	require.Equal(t, "[]\n", body)

	// A grant: 201 with the grant's JSON.
	code, body = a.do(t, "POST", "/grants", ct,
		`{"source": "203.0.113.7", "ttl": "30m", "reason": "hotfix", "users": ["migrator"], "databases": ["shop"], "route": "main"}`)
	require.Equal(t, 201, code, body)
	var g map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &g))
	require.Regexp(t, `^g-[0-9a-f]{16}$`, g["id"])
	require.Equal(t, "203.0.113.7", g["source"])
	require.Equal(t, admintest.Now.Add(30*time.Minute).Format(time.RFC3339), g["until"])
	require.Equal(t, "hotfix", g["reason"])
	require.Equal(t, []any{"migrator"}, g["users"])
	require.Equal(t, []any{"shop"}, g["databases"])
	require.Equal(t, "admin", g["created_by"])
	require.Equal(t, "main", g["route"])
	require.Equal(t, false, g["extended"])

	// Another for every route, without limits: [] rather than null.
	code, body = a.do(t, "POST", "/grants", ct, `{"source": "2001:db8::/64", "ttl": "1h", "reason": "vpn"}`)
	require.Equal(t, 201, code, body)
	require.Contains(t, body, `"users":[]`)
	require.Contains(t, body, `"databases":[]`)

	// The table is full (2): 503; the same source extends instead.
	code, body = a.do(t, "POST", "/grants", ct, `{"source": "198.51.100.1", "ttl": "1h", "reason": "x"}`)
	require.Equal(t, 503, code, body)
	require.Contains(t, body, "too many active grants")
	code, body = a.do(t, "POST", "/grants", ct, `{"source": "203.0.113.7/32", "ttl": "2h", "reason": "longer", "route": "main"}`)
	require.Equal(t, 201, code, body)
	require.Contains(t, body, `"extended":true`)
	require.Contains(t, body, `"id":"`+g["id"].(string)+`"`)

	code, body = a.do(t, "GET", "/grants", "", "")
	require.Equal(t, 200, code)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &list))
	require.Len(t, list, 2)
	require.Equal(t, "2001:db8::/64", list[0]["source"], "soonest to expire first")

	// Revoke by id keeps nothing unless asked; by source (a CIDR in the path).
	code, body = a.do(t, "DELETE", "/grants/"+g["id"].(string)+"?keep_sessions=true", "", "")
	require.Equal(t, 204, code, body)
	code, body = a.do(t, "DELETE", "/grants/2001:db8::%2F64", "", "")
	require.Equal(t, 204, code, body)
	require.Equal(t, []string{"203.0.113.7/32 keep=true", "2001:db8::/64 keep=false"}, a.Revoked())
	code, body = a.do(t, "DELETE", "/grants/"+g["id"].(string), "", "")
	require.Equal(t, 404, code, body)
	require.Contains(t, body, "no such grant")
	require.Empty(t, a.reg.List())
}

func TestGrantsAPIRefusals(t *testing.T) {
	t.Parallel()
	a := newGrantsAdmin(t, 10)
	const ct = "application/json"
	tests := []struct {
		name, method, path, ct, body string
		want                         int
		wantIn                       string
	}{
		{"not json", "POST", "/grants", "text/plain", `{"source":"203.0.113.7","ttl":"1m","reason":"x"}`, 415, "send application/json"},
		{"duplicate key", "POST", "/grants", ct, `{"source":"203.0.113.7","source":"198.51.100.1","ttl":"1m","reason":"x"}`, 400, `duplicate key "source"`},
		{"duplicate key, other case", "POST", "/grants", ct, `{"source":"203.0.113.7","SOURCE":"198.51.100.1","ttl":"1m","reason":"x"}`, 400, "duplicate key"},
		{"trailing data", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"1m","reason":"x"} {}`, 400, "unexpected data after the JSON object"},
		{"unknown key", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"1m","reason":"x","until":"2030-01-01T00:00:00Z"}`, 400, `unknown field "until"`},
		{"no source", "POST", "/grants", ct, `{"ttl":"1m","reason":"x"}`, 400, "source is required"},
		{"hostname", "POST", "/grants", ct, `{"source":"db.example.com","ttl":"1m","reason":"x"}`, 400, "hostnames are not allowed"},
		{"everyone", "POST", "/grants", ct, `{"source":"0.0.0.0/0","ttl":"1m","reason":"x"}`, 400, "use --allow"},
		{"no ttl", "POST", "/grants", ct, `{"source":"203.0.113.7","reason":"x"}`, 400, "ttl is required"},
		{"bad ttl", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"soon","reason":"x"}`, 400, `ttl "soon"`},
		{"short ttl", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"10ms","reason":"x"}`, 400, "at least 1s"},
		{"no reason", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"1m"}`, 400, "a reason is required"},
		{"empty user", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"1m","reason":"x","users":[""]}`, 400, "empty user name"},
		{"oversized", "POST", "/grants", ct, `{"source":"203.0.113.7","ttl":"1m","reason":"` + strings.Repeat("x", 5000) + `"}`, 400, "decoding the request body"},
		{"revoke garbage", "DELETE", "/grants/not-an-id", "", "", 400, "neither a grant id"},
		{"revoke bad keep", "DELETE", "/grants/203.0.113.7?keep_sessions=maybe", "", "", 400, `keep_sessions "maybe"`},
		{"revoke unknown source", "DELETE", "/grants/203.0.113.9", "", "", 404, "no such grant"},
		{"wrong method", "PUT", "/grants", ct, `{}`, 405, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := a.do(t, tc.method, tc.path, tc.ct, tc.body)
			require.Equal(t, tc.want, code, body)
			var e errorJSON
			if tc.wantIn != "" {
				require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			}
			require.Contains(t, e.Error, tc.wantIn)
		})
	}
	require.Empty(t, a.reg.List(), "nothing was granted")
}

// TestNoGrantStore: without a registry the grant paths do not exist.
func TestNoGrantStore(t *testing.T) {
	t.Parallel()
	srv, _, _, _ := newTestAdmin(t)
	resp, err := http.Get(srv.URL + "/grants")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}
