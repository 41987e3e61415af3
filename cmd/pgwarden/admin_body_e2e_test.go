package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// POST /bans takes exactly one JSON object with each key once. Duplicate
// keys (encoding/json would keep the last, case-insensitively) and data
// after the object are refused with 400 and a JSON error naming the
// problem, and nothing is banned; a well-formed body still bans.
func TestAdminBanBodyIsStrict(t *testing.T) {
	e := startBanEnv(t, pgtest.Start(t))
	post := func(body string) (int, string) {
		resp, err := http.Post("http://"+e.admin+"/bans", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(out)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"duplicate ip", `{"ip":"127.0.0.9","ip":"127.0.0.1"}`, `duplicate key "ip"`},
		{"duplicate ip in another case", `{"ip":"127.0.0.9","IP":"127.0.0.1"}`, `duplicate key "IP"`},
		{"duplicate for", `{"ip":"127.0.0.9","for":"1s","for":"1000h"}`, `duplicate key "for"`},
		{"second object", `{"ip":"127.0.0.9"}{"ip":"127.0.0.1"}`, "unexpected data after the JSON object"},
		{"trailing garbage", `{"ip":"127.0.0.9"} x`, "unexpected data after the JSON object"},
		{"not an object", `["127.0.0.9"]`, "expected one JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(tc.body)
			require.Equal(t, http.StatusBadRequest, status, body)
			var ej struct {
				Error string `json:"error"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &ej), body)
			require.Contains(t, ej.Error, tc.want)
			require.Empty(t, e.bans(t), "a refused request banned something")
		})
	}
	// Whitespace after the object is not data.
	status, body := post("{\"ip\":\"127.0.0.9\",\"for\":\"1h\"}\n\t ")
	require.Equal(t, http.StatusCreated, status, body)
	bans := e.bans(t)
	require.Len(t, bans, 1)
	require.Equal(t, "127.0.0.9", bans[0].IP)
}
