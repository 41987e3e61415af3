package main

import (
	"bytes"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/admin"
	"github.com/pgwarden/pgwarden/internal/admin/admintest"
	"github.com/pgwarden/pgwarden/internal/metrics"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

func TestRunBans(t *testing.T) {
	t.Parallel()
	twoBans := []acl.BanInfo{
		{IP: "203.0.113.7", Until: admintest.Now, Failures: 5, Bans: 1},
		{IP: "2001:db8::/64", Until: admintest.Now.Add(time.Hour), Failures: 12, Bans: 3},
	}
	const (
		addrFromServer = "@server" // replaced by the test server's address
		addrDead       = "@dead"   // replaced by an address nothing listens on
	)
	tests := []struct {
		name       string
		bans       []acl.BanInfo
		args       []string
		env        string // PGWARDEN_ADMIN; "@server"/"@dead" are replaced
		wantCode   int
		wantOut    string // exact stdout, when set
		wantErr    string // exact stderr, when set
		wantErrIn  string // stderr substring, when set
		wantCall   string
		wantFor    time.Duration
		wantNoCall bool
	}{
		{
			name: "list table", bans: twoBans, args: []string{"list", "--admin", addrFromServer}, wantCode: 0,
			wantOut: "" +
				"SOURCE         UNTIL                 FAILURES  BANS\n" +
				"203.0.113.7    2026-08-01T10:00:00Z  5         1\n" +
				"2001:db8::/64  2026-08-01T11:00:00Z  12        3\n",
		},
		{
			name: "list json", bans: twoBans[:1], args: []string{"list", "--json", "--admin", addrFromServer}, wantCode: 0,
			wantOut: `[{"ip":"203.0.113.7","until":"2026-08-01T10:00:00Z","failures":5,"bans":1}]` + "\n",
		},
		{name: "list empty", args: []string{"list", "--admin", addrFromServer}, wantCode: 0, wantOut: "no active bans\n"},
		{name: "admin from env", bans: twoBans[:1], args: []string{"list", "--json"}, env: addrFromServer, wantCode: 0, wantOut: `[{"ip":"203.0.113.7","until":"2026-08-01T10:00:00Z","failures":5,"bans":1}]` + "\n"},
		{name: "flag wins over env", args: []string{"list", "--admin", addrFromServer}, env: addrDead, wantCode: 0, wantOut: "no active bans\n"},
		{
			name: "ban for", args: []string{"ban", "198.51.100.9", "--for", "90m", "--admin", addrFromServer}, wantCode: 0,
			wantOut: "banned 198.51.100.9 until 2026-08-01T11:30:00Z (ban #1)\n", wantCall: "ban 198.51.100.9", wantFor: 90 * time.Minute,
		},
		{
			name: "ban escalated", bans: []acl.BanInfo{{IP: "198.51.100.9", Bans: 1}}, args: []string{"ban", "--admin", addrFromServer, "198.51.100.9"},
			wantCode: 0, wantOut: "banned 198.51.100.9 until 2026-08-01T10:20:00Z (ban #2)\n", wantCall: "ban 198.51.100.9", wantFor: 0,
		},
		{name: "ban prefix", args: []string{"ban", "2001:db8::/64", "--admin", addrFromServer}, wantCode: 0, wantCall: "ban 2001:db8::/64"},
		{name: "unban", bans: twoBans, args: []string{"unban", "203.0.113.7", "--admin", addrFromServer}, wantCode: 0, wantOut: "unbanned 203.0.113.7\n", wantCall: "unban 203.0.113.7"},
		{name: "unban prefix", bans: twoBans, args: []string{"unban", "2001:db8::/64", "--admin", addrFromServer}, wantCode: 0, wantCall: "unban 2001:db8::/64"},
		{
			name: "unban not banned", args: []string{"unban", "192.0.2.1", "--admin", addrFromServer}, wantCode: 1,
			wantErr: "pgwarden: unbanning 192.0.2.1: not banned\n",
		},
		{
			name: "unreachable", args: []string{"list", "--admin", addrDead}, wantCode: 1,
			wantErr: "pgwarden: cannot reach the admin endpoint at @dead: connection refused (is pgwarden serve running with --admin @dead?)\n",
		},
		{name: "no subcommand", args: nil, wantCode: 2, wantErrIn: "Usage:", wantNoCall: true},
		{name: "help", args: []string{"--help"}, wantCode: 0, wantNoCall: true},
		{name: "subcommand help", args: []string{"ban", "--help"}, wantCode: 0, wantNoCall: true},
		{name: "unknown subcommand", args: []string{"show"}, wantCode: 2, wantErrIn: `unknown subcommand "show"`, wantNoCall: true},
		{name: "ban without ip", args: []string{"ban", "--admin", addrFromServer}, wantCode: 2, wantErrIn: "expected one IP address or CIDR prefix", wantNoCall: true},
		{name: "ban bad ip", args: []string{"ban", "db.example.com", "--admin", addrFromServer}, wantCode: 2, wantErrIn: `"db.example.com" is not an IP address`, wantNoCall: true},
		{name: "ban bad duration", args: []string{"ban", "192.0.2.1", "--for", "soon", "--admin", addrFromServer}, wantCode: 2, wantErrIn: "--for", wantNoCall: true},
		{name: "ban negative duration", args: []string{"ban", "192.0.2.1", "--for", "-1h", "--admin", addrFromServer}, wantCode: 2, wantErrIn: "--for must be positive", wantNoCall: true},
		{name: "list extra argument", args: []string{"list", "extra", "--admin", addrFromServer}, wantCode: 2, wantErrIn: `unexpected argument "extra"`, wantNoCall: true},
		{name: "unknown flag", args: []string{"list", "--format", "x"}, wantCode: 2, wantErrIn: "unknown flag: --format", wantNoCall: true},
		{name: "bad admin", args: []string{"list", "--admin", "9187"}, wantCode: 2, wantErrIn: `--admin "9187": expected HOST:PORT`, wantNoCall: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			jail := admintest.NewJail()
			s, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Bans: jail, Ready: func() error { return nil }, Registry: metrics.New().Registry()})
			require.NoError(t, err)
			srv := httptest.NewServer(s.Handler())
			t.Cleanup(srv.Close)
			jail.Set(tc.bans...)
			live, dead := strings.TrimPrefix(srv.URL, "http://"), pgtest.FreeAddr(t)
			subst := func(s string) string {
				return strings.ReplaceAll(strings.ReplaceAll(s, addrFromServer, live), addrDead, dead)
			}
			args := make([]string, len(tc.args))
			for i, a := range tc.args {
				args[i] = subst(a)
			}
			getenv := func(k string) string {
				if k == "PGWARDEN_ADMIN" {
					return subst(tc.env)
				}
				return ""
			}

			var stdout, stderr bytes.Buffer
			code := runBansEnv(args, &stdout, &stderr, getenv)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q; stderr %q", code, tc.wantCode, stdout.String(), stderr.String())
			}
			if tc.wantOut != "" && stdout.String() != tc.wantOut {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), tc.wantOut)
			}
			if tc.wantErr != "" && stderr.String() != subst(tc.wantErr) {
				t.Errorf("stderr = %q, want %q", stderr.String(), subst(tc.wantErr))
			}
			if tc.wantErrIn != "" && !strings.Contains(stderr.String(), tc.wantErrIn) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.wantErrIn)
			}
			if tc.wantCode == 0 && tc.wantErr == "" && stderr.Len() > 0 {
				t.Errorf("unexpected stderr %q", stderr.String())
			}
			call, d := jail.LastCall()
			switch {
			case tc.wantNoCall && call != "":
				t.Errorf("jail was called (%q) on a usage error", call)
			case tc.wantCall != "" && (call != tc.wantCall || d != tc.wantFor && strings.HasPrefix(call, "ban ")):
				t.Errorf("jail call = %q for %s, want %q for %s", call, d, tc.wantCall, tc.wantFor)
			}
		})
	}
}

// TestRunBansHelpGoesToStdout keeps `pgwarden bans --help | less` working.
func TestRunBansHelpGoesToStdout(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := runBansEnv([]string{"list", "-h"}, &stdout, &stderr, func(string) string { return "" })
	if code != 0 || !strings.Contains(stdout.String(), "--json") || stderr.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

// TestAdminWithRealJail runs the endpoint over an in-memory acl.Jail, so
// the error mapping follows the jail's real errors, not the fake's.
func TestAdminWithRealJail(t *testing.T) {
	t.Parallel()
	cfg := acl.DefaultJailConfig()
	cfg.Rand = func() float64 { return 0 }
	jail, err := acl.NewJail(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = jail.Close() })
	m := metrics.New()
	m.SetBanStore(jail)
	s, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Bans: jail, Ready: func() error { return nil }, Registry: m.Registry(), Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	getenv := func(string) string { return "" }

	steps := []struct {
		args     []string
		wantCode int
		wantOut  string // substring of stdout
		wantErr  string // substring of stderr
	}{
		{args: []string{"ban", "203.0.113.7", "--for", "1h"}, wantOut: "banned 203.0.113.7 until "},
		{args: []string{"ban", "2001:db8::/64"}, wantOut: "banned 2001:db8::/64 until "},
		{args: []string{"list"}, wantOut: "203.0.113.7 "},
		{args: []string{"list"}, wantOut: "2001:db8::/64 "},
		{args: []string{"unban", "2001:db8::/64"}, wantOut: "unbanned 2001:db8::/64"},
		{args: []string{"unban", "2001:db8::/64"}, wantCode: 1, wantErr: "not banned"},
		{args: []string{"unban", "198.51.100.1"}, wantCode: 1, wantErr: "not banned"},
		{args: []string{"ban", "10.0.0.0/8", "--for", "1m"}, wantOut: "banned 10.0.0.0/8"},
	}
	for _, st := range steps {
		var stdout, stderr bytes.Buffer
		code := runBansEnv(append(st.args, "--admin", addr), &stdout, &stderr, getenv)
		if code != st.wantCode || !strings.Contains(stdout.String(), st.wantOut) || !strings.Contains(stderr.String(), st.wantErr) {
			t.Errorf("bans %v: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q",
				st.args, code, stdout.String(), stderr.String(), st.wantCode, st.wantOut, st.wantErr)
		}
	}
	if n := jail.ActiveBans(); n != 2 {
		t.Errorf("ActiveBans = %d, want 2", n)
	}
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if !strings.Contains(string(out), "pgwarden_bans_active 2\n") {
		t.Errorf("bans_active gauge not 2:\n%s", out)
	}
}
