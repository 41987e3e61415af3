package crowdsec

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
)

// recordingTransport keeps the bodies of the alerts the LAPI accepted.
type recordingTransport struct {
	mu       sync.Mutex
	accepted []string
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	res, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && req.URL.Path == "/v1/alerts" && res.StatusCode == http.StatusCreated {
		r.mu.Lock()
		r.accepted = append(r.accepted, string(body))
		r.mu.Unlock()
	}
	return res, err
}

// TestRealLAPIAlerts runs the jail and the pusher against Debian's CrowdSec
// LAPI, logged in with the credentials file `cscli machines add --auto`
// writes: an automatic ban, a manual one and an IPv6 /64 become ban
// decisions every bouncer sees (and cscli lists); a ban applied from the
// fleet is not pushed; an unban lifts the decision.
func TestRealLAPIAlerts(t *testing.T) {
	l := startRealLAPI(t, nil)
	key := strings.TrimSpace(l.run(t, "bouncers", "add", "pgwarden-check", "-o", "raw"))
	credsFile := filepath.Join(l.dir, "pgwarden-machine.yaml")
	l.run(t, "machines", "add", "pgwarden", "--auto", "-f", credsFile, "--url", l.url)
	mc, err := ReadMachineCredentials(credsFile)
	require.NoError(t, err)

	rec := &recordingTransport{}
	p, err := NewPusher(PusherConfig{Credentials: mc, CredentialsFile: credsFile, HTTPClient: &http.Client{Transport: rec},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	require.NoError(t, err)
	require.NoError(t, p.Login(t.Context()))

	jc := acl.DefaultJailConfig()
	jc.MaxRetry = 2
	jc.OnLocalBan = p.Ban
	jc.OnLocalUnban = p.Unban
	jail, err := acl.NewJail(jc)
	require.NoError(t, err)
	t.Cleanup(func() { _ = jail.Close() })
	runPusher(t, p)

	// A ban from the fleet first: had it been pushed, it would be in the
	// first batch, ahead of the bans below.
	jail.ApplyBan(acl.SharedBan{Key: netip.MustParsePrefix("127.0.0.79/32"), Until: time.Now().Add(time.Hour), Failures: 5, Bans: 1, At: time.Now()})
	for range 2 {
		jail.Failed(netip.MustParseAddr("127.0.0.78"), acl.Failure{User: "postgres", Database: "postgres", SQLState: "28P01"})
	}
	_, err = jail.Ban("127.0.0.77", time.Hour)
	require.NoError(t, err)
	_, err = jail.Ban("2001:db8:1:2::/64", 30*time.Minute)
	require.NoError(t, err)

	require.Eventually(t, func() bool { return p.Pushed() == 3 }, 30*time.Second, 20*time.Millisecond, "three alerts pushed")
	require.Zero(t, p.Failed())
	for _, v := range []string{"127.0.0.77", "127.0.0.78", "2001:db8:1:2::/64"} {
		require.Len(t, l.decisionIDs(t, key, v), 1, "a ban decision on %s", v)
	}
	require.Empty(t, l.decisionIDs(t, key, "127.0.0.79"), "a fleet ban is not pushed again")

	var listed []struct {
		Decisions []struct {
			Value, Type, Origin, Scenario, Scope string
		} `json:"decisions"`
	}
	require.NoError(t, json.Unmarshal([]byte(l.run(t, "decisions", "list", "-o", "json")), &listed))
	seen := map[string]string{}
	for _, a := range listed {
		for _, d := range a.Decisions {
			seen[d.Scope+":"+d.Value] = d.Type + " " + d.Origin + " " + d.Scenario
		}
	}
	require.Equal(t, "ban crowdsec pgwarden/pgwarden-ban", seen["Ip:127.0.0.77"])
	require.Equal(t, "ban crowdsec pgwarden/pgwarden-ban", seen["Ip:127.0.0.78"])
	require.Equal(t, "ban crowdsec pgwarden/pgwarden-ban-range", seen["Range:2001:db8:1:2::/64"])
	rec.mu.Lock()
	t.Logf("alerts the LAPI accepted:\n%s", strings.Join(rec.accepted, "\n"))
	rec.mu.Unlock()

	require.NoError(t, jail.Unban("127.0.0.77"))
	require.NoError(t, jail.Unban("2001:db8:1:2::/64"))
	require.Eventually(t, func() bool {
		return len(l.decisionIDs(t, key, "127.0.0.77")) == 0 && len(l.decisionIDs(t, key, "2001:db8:1:2::/64")) == 0
	}, 30*time.Second, 50*time.Millisecond, "the unbans lift the decisions")
	require.Len(t, l.decisionIDs(t, key, "127.0.0.78"), 1, "the other ban stays")

	bad := mc
	bad.Password = "wrong"
	wrong, err := NewPusher(PusherConfig{Credentials: bad})
	require.NoError(t, err)
	require.ErrorIs(t, wrong.Login(t.Context()), ErrLoginRejected)
}
