package crowdsec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/testproc"
)

// realLAPI is a CrowdSec LAPI (crowdsec -no-cs: the API without the log
// agent) running from Debian's crowdsec package, in a temporary directory,
// on a free loopback port, with the Central API off: it needs no network.
type realLAPI struct {
	dir, bin, cscli, url, config string
}

// findCrowdSec returns the directory holding crowdsec and cscli:
// $CROWDSEC_BIN_DIR (a directory an extracted .deb put them in, say), else
// PATH. The test is optional: CI does not install CrowdSec.
func findCrowdSec() (string, bool) {
	for _, dir := range []string{os.Getenv("CROWDSEC_BIN_DIR"), ""} {
		cs, cli := "crowdsec", "cscli"
		if dir != "" {
			cs, cli = filepath.Join(dir, cs), filepath.Join(dir, cli)
		}
		p1, err1 := exec.LookPath(cs)
		_, err2 := exec.LookPath(cli)
		if err1 == nil && err2 == nil {
			return filepath.Dir(p1), true
		}
	}
	return "", false
}

// agentSetup is what running the CrowdSec agent (not only the LAPI) needs
// from the package: its hub (for the stock parsers) and grok patterns.
type agentSetup struct {
	hub, patterns string
	parsers       map[string]string // stage/name.yaml → source file
	scenarios     []string          // source files
}

// findAgentFiles locates the package's hub and patterns next to the
// binaries (an extracted .deb) or in the installed places.
func findAgentFiles(bin string) (hub, patterns string, ok bool) {
	for _, root := range []string{filepath.Join(bin, "..", ".."), "/"} {
		hub = filepath.Join(root, "usr/share/crowdsec/hub")
		patterns = filepath.Join(root, "etc/crowdsec/patterns")
		if _, err := os.Stat(filepath.Join(hub, ".index.json")); err != nil {
			continue
		}
		if _, err := os.Stat(patterns); err == nil {
			return hub, patterns, true
		}
	}
	return "", "", false
}

func startRealLAPI(t *testing.T, agent *agentSetup) *realLAPI {
	t.Helper()
	bin, ok := findCrowdSec()
	if !ok {
		t.Skip("crowdsec and cscli not found (set CROWDSEC_BIN_DIR or install Debian's crowdsec)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	l := &realLAPI{dir: dir, bin: bin, cscli: filepath.Join(bin, "cscli"), url: "http://" + addr + "/",
		config: filepath.Join(dir, "config.yaml")}
	for _, d := range []string{"data", "hub"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	hubDir := filepath.Join(dir, "hub")
	if agent != nil {
		// The agent walks the hub index; the LAPI alone runs with an empty one.
		hubDir = agent.hub
		copyFile(t, agent.patterns, filepath.Join(dir, "patterns"))
		for dst, src := range agent.parsers {
			copyFile(t, src, filepath.Join(dir, "parsers", dst))
		}
		for _, src := range agent.scenarios {
			copyFile(t, src, filepath.Join(dir, "scenarios", filepath.Base(src)))
		}
	}
	files := map[string]string{
		"hub/.index.json": "{}",
		"simulation.yaml": "simulation: false\n",
		"profiles.yaml": `name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
---
name: default_range_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Range"
decisions:
 - type: ban
   duration: 4h
on_success: break
`,
		"config.yaml": fmt.Sprintf(`common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: .
config_paths:
  config_dir: %[1]s/
  data_dir: %[1]s/data/
  simulation_path: %[1]s/simulation.yaml
  hub_dir: %[3]s/
  index_path: %[3]s/.index.json
crowdsec_service:
  acquisition_path: %[1]s/acquis.yaml
  parser_routines: 1
db_config:
  type: sqlite
  db_path: %[1]s/data/crowdsec.db
  use_wal: false
api:
  client:
    credentials_path: %[1]s/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: %[2]s
    profiles_path: %[1]s/profiles.yaml
prometheus:
  enabled: false
`, dir, addr, hubDir),
		"acquis.yaml": "",
	}
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	l.run(t, "machines", "add", "pgwarden-test", "--password", "pgwarden-test-password",
		"-f", filepath.Join(dir, "local_api_credentials.yaml"), "--url", l.url)

	logf, err := os.Create(filepath.Join(dir, "crowdsec.log"))
	require.NoError(t, err)
	t.Cleanup(func() { logf.Close() })
	cmd := exec.Command(filepath.Join(bin, "crowdsec"), "-c", l.config, "-no-cs")
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	proc, err := testproc.Start(cmd)
	require.NoError(t, err)
	t.Cleanup(func() {
		proc.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "crowdsec.log"))
			t.Logf("crowdsec log:\n%s", b)
		}
	})
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "the LAPI listens")
	return l
}

// copyFile copies a file, or a directory recursively.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	fi, err := os.Stat(src)
	require.NoError(t, err)
	if fi.IsDir() {
		entries, err := os.ReadDir(src)
		require.NoError(t, err)
		for _, e := range entries {
			copyFile(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
		}
		return
	}
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	require.NoError(t, os.WriteFile(dst, b, 0o644))
}

// run runs cscli with the test's config and returns its stdout.
func (l *realLAPI) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.cscli, append([]string{"-c", l.config}, args...)...)
	cmd.Dir = l.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Run(), "cscli %s: %s", strings.Join(args, " "), errb.String())
	return out.String()
}

// decisionIDs lists the ids of the active decisions on value, asking the
// LAPI's stream directly (cscli lists only the longest per address).
func (l *realLAPI) decisionIDs(t *testing.T, key, value string) []int64 {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, l.url+"v1/decisions/stream?startup=true&dedup=false", nil)
	require.NoError(t, err)
	req.Header.Set("X-Api-Key", key)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var got struct {
		New []apiDecision `json:"new"`
	}
	require.NoError(t, json.NewDecoder(res.Body).Decode(&got))
	var ids []int64
	for _, d := range got.New {
		if d.Value == value {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

// pullUntil pulls until cond holds (the LAPI's deltas are computed from
// its last-pull time, so a change may show one pull later).
func pullUntil(t *testing.T, b *Bouncer, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		require.NoError(t, b.Pull(context.Background()))
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bouncer never saw %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestRealLAPI runs the bouncer against Debian's CrowdSec LAPI: decisions
// added with cscli are enforced, deleting one of two decisions on an
// address keeps the other, deleting all lifts it, and a wrong key is
// ErrUnauthorized.
func TestRealLAPI(t *testing.T) {
	l := startRealLAPI(t, nil)
	key := strings.TrimSpace(l.run(t, "bouncers", "add", "pgwarden", "-o", "raw"))
	l.run(t, "decisions", "add", "--ip", "192.0.2.1", "--duration", "1h")
	l.run(t, "decisions", "add", "--range", "10.0.0.0/8", "--duration", "2h")
	l.run(t, "decisions", "add", "--ip", "192.0.2.5", "--duration", "1h")
	l.run(t, "decisions", "add", "--ip", "192.0.2.5", "--duration", "4h")

	b, err := New(Config{URL: l.url, KeyFile: keyFile(t, key+"\n"), Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.NoError(t, b.Pull(context.Background()))
	require.True(t, b.Up())
	require.Equal(t, 4, b.Decisions(), "every decision, not the longest per address")
	requireBanned(t, b, true, "192.0.2.1", "10.9.8.7", "192.0.2.5")
	requireBanned(t, b, false, "192.0.2.2", "11.0.0.1")

	ids := l.decisionIDs(t, key, "192.0.2.5")
	require.Len(t, ids, 2)
	longest := max(ids[0], ids[1])
	l.run(t, "decisions", "delete", "--id", fmt.Sprint(longest))
	pullUntil(t, b, "the deletion of the longer decision", func() bool { return b.Decisions() == 3 })
	requireBanned(t, b, true, "192.0.2.5")

	l.run(t, "decisions", "delete", "--ip", "192.0.2.5")
	pullUntil(t, b, "the deletion of the last decision on 192.0.2.5", func() bool { return !b.Banned(ip("192.0.2.5")) })
	requireBanned(t, b, true, "192.0.2.1", "10.9.8.7")

	bad, err := New(Config{URL: l.url, KeyFile: keyFile(t, "wrong"), Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.ErrorIs(t, bad.Pull(context.Background()), ErrUnauthorized)
}
