package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// runHealthCmd runs `pgwarden health args...` and returns its exit code,
// stdout and stderr.
func runHealthCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(pgwardenBinary(t), append([]string{"health"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stdout.String(), stderr.String()
}

// TestHealthAndMetricsListen: `pgwarden health` is a container's health
// check (exit 0 ready, 1 not), against the admin endpoint or the read-only
// --metrics-listen one, which serves /metrics to any Host but nothing
// that bans.
func TestHealthAndMetricsListen(t *testing.T) {
	certFile, keyFile, _ := tlsFiles(t)
	// The upstream: readiness only needs it to accept connections.
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() {
		for {
			c, err := upstream.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	adminAddr, metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startBinary(t, "--listen", "127.0.0.1:0", "--upstream", upstream.Addr().String(), "--allow", "127.0.0.1",
		"--tls-cert", certFile, "--tls-key", keyFile, "--admin", adminAddr, "--metrics-listen", metricsAddr)
	require.True(t, p.hasLog("metrics endpoint listening"))

	for _, addr := range []string{adminAddr, metricsAddr} {
		code, out, errOut := runHealthCmd(t, "--url", "http://"+addr+"/readyz")
		require.Equal(t, 0, code, "stderr: %s", errOut)
		require.Equal(t, "ready\n", out)
	}

	get := func(method, addr, path, host string) int {
		req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(`{"ip":"192.0.2.1"}`))
		require.NoError(t, err)
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, get(http.MethodGet, metricsAddr, "/metrics", "pgwarden.example"))
	require.Equal(t, http.StatusNotFound, get(http.MethodPost, metricsAddr, "/bans", "127.0.0.1"))
	require.Equal(t, http.StatusNotFound, get(http.MethodGet, metricsAddr, "/bans", "127.0.0.1"))
	require.Equal(t, http.StatusForbidden, get(http.MethodGet, adminAddr, "/metrics", "pgwarden.example"), "the admin endpoint keeps its Host check")

	// The upstream goes away: not ready, with the reason.
	require.NoError(t, upstream.Close())
	code, _, errOut := runHealthCmd(t, "--url", "http://"+adminAddr+"/readyz")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "503 Service Unavailable: not ready: route default: upstream")

	// Nothing there at all.
	code, _, errOut = runHealthCmd(t, "--url", fmt.Sprintf("http://127.0.0.1:%d/readyz", freePort(t)))
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "connection refused")

	// Usage errors.
	code, _, errOut = runHealthCmd(t, "--url", adminAddr)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "want http://HOST:PORT/readyz")
	code, _, _ = runHealthCmd(t, "extra")
	require.Equal(t, 2, code)
}
