package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/internal/fakeclock"
	"github.com/pgwarden/pgwarden/internal/metrics"
)

// TestMetricsEndpointIsReadOnly: the endpoint other hosts may reach serves
// /metrics, /healthz and /readyz to any Host, and nothing that bans or
// unbans.
func TestMetricsEndpointIsReadOnly(t *testing.T) {
	t.Parallel()
	ready := &fakeReadiness{}
	s, err := NewMetrics(MetricsConfig{Addr: "0.0.0.0:0", Ready: ready.Ready, Registry: metrics.New().Registry(), Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	do := func(method, path, host string) (int, string) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(`{"ip":"192.0.2.1"}`))
		require.NoError(t, err)
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	for _, host := range []string{"127.0.0.1", "pgwarden.example:9188", "10.0.0.5"} {
		code, body := do(http.MethodGet, "/metrics", host)
		require.Equal(t, http.StatusOK, code, body)
		require.Contains(t, body, "pgwarden_bans_total 0")
		code, _ = do(http.MethodGet, "/healthz", host)
		require.Equal(t, http.StatusOK, code)
		code, _ = do(http.MethodGet, "/readyz", host)
		require.Equal(t, http.StatusOK, code)
	}
	for _, req := range [][2]string{{http.MethodGet, "/bans"}, {http.MethodPost, "/bans"}, {http.MethodDelete, "/bans/192.0.2.1"}, {http.MethodGet, "/grants"}} {
		code, body := do(req[0], req[1], "127.0.0.1")
		require.Equal(t, http.StatusNotFound, code, "%s %s: %s", req[0], req[1], body)
	}
}

func TestValidateMetricsAddr(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"0.0.0.0:9188", ":9188", "[::]:0", "10.1.2.3:9188", "127.0.0.1:0", "metrics.internal:9188"} {
		_, err := ValidateMetricsAddr(ok)
		require.NoError(t, err, ok)
	}
	for addr, want := range map[string]string{
		"9188":          `metrics address "9188": expected HOST:PORT`,
		"0.0.0.0:x":     `metrics address "0.0.0.0:x": port "x" is not a number`,
		"0.0.0.0:70000": `port "70000" is not a number from 0 to 65535`,
	} {
		_, err := ValidateMetricsAddr(addr)
		require.ErrorContains(t, err, want)
	}
}

// TestMetricsReadinessIsCached: however often /readyz is asked, the
// check (which dials every upstream) runs at most once a second.
func TestMetricsReadinessIsCached(t *testing.T) {
	t.Parallel()
	clock := fakeclock.New(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	checks := 0
	c := &cachedReady{now: clock.Now, check: func() error { checks++; return errors.New("upstream down") }}
	for range 100 {
		require.EqualError(t, c.Ready(), "upstream down")
	}
	require.Equal(t, 1, checks)
	clock.Advance(readyInterval)
	require.Error(t, c.Ready())
	require.Equal(t, 2, checks)
}
