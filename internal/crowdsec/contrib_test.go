package crowdsec

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/acl"
)

// writeJailLog writes what pgwarden's jail logs for a password-guessing
// IPv4 client, an IPv6 client rotating through its /64, and an operator's
// range ban, with the encoder settings of pgwarden serve's JSON log.
func writeJailLog(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "ts"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.EncodeDuration = zapcore.StringDurationEncoder
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(f), zap.InfoLevel))
	cfg := acl.DefaultJailConfig()
	cfg.Logger = log
	j, err := acl.NewJail(cfg)
	require.NoError(t, err)
	defer j.Close()
	fail := acl.Failure{User: `eve","source":"203.0.113.66`, Database: "app", SQLState: "28P01"}
	for range 6 { // the sixth comes from a connection that passed accept before the ban
		j.Failed(netip.MustParseAddr("192.0.2.7"), fail)
	}
	for i := range 5 {
		j.Failed(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 5, 15: byte(i + 1)}), fail)
	}
	_, err = j.Ban("198.51.100.0/24", time.Hour)
	require.NoError(t, err)
	require.NoError(t, log.Sync())
}

// TestContribCrowdSecFiles runs pgwarden's log through the parser and
// scenarios in contrib/crowdsec with Debian's CrowdSec agent, then pulls
// the resulting decisions with this bouncer: pgwarden's bans travel to
// CrowdSec and back.
func TestContribCrowdSecFiles(t *testing.T) {
	bin, ok := findCrowdSec()
	if !ok {
		t.Skip("crowdsec and cscli not found (set CROWDSEC_BIN_DIR or install Debian's crowdsec)")
	}
	hub, patterns, ok := findAgentFiles(bin)
	if !ok {
		t.Skip("the crowdsec package's hub and patterns were not found")
	}
	contrib := filepath.Join("..", "..", "contrib", "crowdsec")
	l := startRealLAPI(t, &agentSetup{hub: hub, patterns: patterns,
		parsers: map[string]string{
			"s00-raw/pgwarden-raw.yaml":        filepath.Join(contrib, "parsers/s00-raw/pgwarden-raw.yaml"),
			"s01-parse/pgwarden-logs.yaml":     filepath.Join(contrib, "parsers/s01-parse/pgwarden-logs.yaml"),
			"s02-enrich/dateparse-enrich.yaml": filepath.Join(hub, "parsers/s02-enrich/crowdsecurity/dateparse-enrich.yaml"),
		},
		scenarios: []string{filepath.Join(contrib, "scenarios/pgwarden-bf.yaml")},
	})
	logPath := filepath.Join(l.dir, "pgwarden.log")
	writeJailLog(t, logPath)

	// Replay mode: the agent reads the file, sends its alerts, and exits.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(l.bin, "crowdsec"), "-c", l.config,
		"-dsn", "file://"+logPath, "-type", "pgwarden", "-no-api").CombinedOutput()
	require.NoError(t, err, "%s", out)

	var alerts []struct {
		Scenario string `json:"scenario"`
		Source   struct {
			Scope string `json:"scope"`
			Value string `json:"value"`
		} `json:"source"`
	}
	require.NoError(t, json.Unmarshal([]byte(l.run(t, "alerts", "list", "-o", "json")), &alerts))
	got := map[string]bool{}
	for _, a := range alerts {
		got[a.Scenario+" "+a.Source.Scope+":"+a.Source.Value] = true
	}
	for _, want := range []string{
		"pgwarden/pgwarden-bf Ip:192.0.2.7",
		"pgwarden/pgwarden-ban Ip:192.0.2.7",
		"pgwarden/pgwarden-ban-range Range:2001:db8:5::/64",
		"pgwarden/pgwarden-ban-range Range:198.51.100.0/24",
	} {
		require.True(t, got[want], "missing alert %q in %v\nagent output:\n%s", want, got, out)
	}
	for k := range got {
		require.NotContains(t, k, "203.0.113.66", "a user name posed as the source")
	}

	key := strings.TrimSpace(l.run(t, "bouncers", "add", "pgwarden", "-o", "raw"))
	b, err := New(Config{URL: l.url, KeyFile: keyFile(t, key), Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.NoError(t, b.Pull(context.Background()))
	requireBanned(t, b, true, "192.0.2.7", "2001:db8:5::abcd", "198.51.100.200")
	requireBanned(t, b, false, "203.0.113.66", "192.0.2.8")
}
