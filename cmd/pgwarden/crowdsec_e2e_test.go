package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// streamLAPI is a CrowdSec LAPI serving the documented decision stream:
// GET /v1/decisions/stream?startup=true answers every decision it holds,
// startup=false what changed since the last pull. It checks the bouncer's
// X-Api-Key, and can be taken down (it then answers 503).
type streamLAPI struct {
	*httptest.Server
	key string

	mu        sync.Mutex
	decisions map[int]string // id → decision JSON
	added     []int          // since the last pull
	deleted   []string       // decision JSON, since the last pull
	down      bool
	pulls     int
}

func newStreamLAPI(t *testing.T, key string) *streamLAPI {
	l := &streamLAPI{key: key, decisions: map[int]string{}}
	l.Server = httptest.NewServer(http.HandlerFunc(l.serve))
	t.Cleanup(l.Close)
	return l
}

func decisionJSON(id int, scope, value, duration string) string {
	return fmt.Sprintf(`{"id": %d, "origin": "crowdsec", "type": "ban", "scope": %q, "value": %q, "duration": %q, "scenario": "crowdsecurity/ssh-bf"}`,
		id, scope, value, duration)
}

func (l *streamLAPI) add(id int, scope, value string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decisions[id] = decisionJSON(id, scope, value, "4h")
	l.added = append(l.added, id)
}

func (l *streamLAPI) remove(id int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deleted = append(l.deleted, l.decisions[id])
	delete(l.decisions, id)
}

func (l *streamLAPI) setDown(down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = down
}

// pulled is how many pulls were answered.
func (l *streamLAPI) pulled() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pulls
}

func (l *streamLAPI) serve(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.down:
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case r.URL.Path != "/v1/decisions/stream":
		w.WriteHeader(http.StatusNotFound)
		return
	case r.Header.Get("X-Api-Key") != l.key:
		w.WriteHeader(http.StatusForbidden)
		return
	}
	var news []string
	if r.URL.Query().Get("startup") == "true" {
		for _, d := range l.decisions {
			news = append(news, d)
		}
	} else {
		for _, id := range l.added {
			if d, ok := l.decisions[id]; ok {
				news = append(news, d)
			}
		}
	}
	deleted := l.deleted
	l.added, l.deleted = nil, nil
	l.pulls++
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"new": %s, "deleted": %s}`, jsonList(news), jsonList(deleted))
}

func jsonList(items []string) string {
	if items == nil {
		return "null"
	}
	out := "["
	for i, s := range items {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out + "]"
}

// TestCrowdSecDecisionsRefusedAtAccept: a gateway pulling a LAPI's
// decisions resets the sources they ban (an IP, a range) at accept, with
// nothing reaching postgres; a deleted decision lifts only itself; while
// the LAPI is down the decisions it last gave stay in force, and the
// metrics say so.
func TestCrowdSecDecisionsRefusedAtAccept(t *testing.T) {
	pg := pgtest.Start(t)
	lapi := newStreamLAPI(t, "k3y-for-pgwarden")
	lapi.add(1, "Ip", "127.0.0.9")
	lapi.add(2, "Range", "127.0.1.0/24")
	lapi.add(3, "Ip", "127.0.1.7") // the same address twice: a second decision
	keyFile := filepath.Join(t.TempDir(), "bouncer.key")
	require.NoError(t, os.WriteFile(keyFile, []byte("k3y-for-pgwarden\n"), 0o600))
	e := startBanEnv(t, pg, "--crowdsec-lapi", lapi.URL, "--crowdsec-key-file", keyFile, "--crowdsec-interval", "100ms")

	require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_crowdsec_up") == 1 },
		fleetWait, 20*time.Millisecond, "crowdsec_up never read 1")
	require.Equal(t, 3.0, mustMetric(t, e.admin, "pgwarden_crowdsec_decisions"))
	e.requireRefusedAtAccept(t, "127.0.0.9")
	e.requireRefusedAtAccept(t, "127.0.1.7")
	e.requireRefusedAtAccept(t, "127.0.1.200")
	require.Equal(t, 3.0, mustMetric(t, e.admin, `pgwarden_rejections_total{reason="crowdsec",route="default"}`))
	require.Equal(t, 0.0, mustMetric(t, e.admin, `pgwarden_rejections_total{reason="banned",route="default"}`))
	require.NoError(t, e.connectFrom("127.0.0.10", pg.Password), "a source no decision covers")
	require.Empty(t, e.bans(t), "CrowdSec's decisions are not the jail's bans")

	// Deleting the IP decision lifts it; deleting the range leaves the
	// address that has a decision of its own banned.
	lapi.remove(1)
	lapi.remove(2)
	e.requireResetEventually(t, "127.0.0.9", false, "the deleted decision was never lifted")
	e.requireResetEventually(t, "127.0.1.200", false, "the deleted range was never lifted")
	require.NoError(t, e.connectFrom("127.0.0.9", pg.Password))
	e.requireRefusedAtAccept(t, "127.0.1.7")

	// The LAPI goes down: the last decisions stay in force.
	lapi.setDown(true)
	require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_crowdsec_up") == 0 },
		fleetWait, 20*time.Millisecond, "crowdsec_up never read 0")
	e.requireRefusedAtAccept(t, "127.0.1.7")
	require.Equal(t, 1.0, mustMetric(t, e.admin, "pgwarden_crowdsec_decisions"))
	e.get(t, "/readyz", http.StatusOK)

	// Back up, with a new decision meanwhile: it is enforced too.
	lapi.add(4, "Ip", "127.0.0.11")
	lapi.setDown(false)
	e.requireResetEventually(t, "127.0.0.11", true, "a decision made during the outage was never enforced")
	require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_crowdsec_up") == 1 },
		fleetWait, 20*time.Millisecond)
	require.Positive(t, lapi.pulled())
}

// watcherLAPI is the machine side of a CrowdSec LAPI: it logs the machine
// in and records the alerts posted and the decisions deleted.
type watcherLAPI struct {
	*httptest.Server
	mu      sync.Mutex
	alerts  []map[string]any
	deletes []url.Values
}

func newWatcherLAPI(t *testing.T) *watcherLAPI {
	l := &watcherLAPI{}
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/watchers/login":
			var in map[string]any
			if json.NewDecoder(r.Body).Decode(&in) != nil || in["machine_id"] != "pgwarden" || in["password"] != "machine-pw" {
				http.Error(w, `{"code":401,"message":"incorrect Username or Password"}`, http.StatusUnauthorized)
				return
			}
			fmt.Fprintf(w, `{"code":200,"expire":%q,"token":"jwt"}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
		case r.Header.Get("Authorization") != "Bearer jwt":
			http.Error(w, `{"code":401,"message":"Token is expired"}`, http.StatusUnauthorized)
		case r.Method == http.MethodPost && r.URL.Path == "/v1/alerts":
			var batch []map[string]any
			if json.NewDecoder(r.Body).Decode(&batch) != nil {
				http.Error(w, `{"message":"bad"}`, http.StatusBadRequest)
				return
			}
			l.alerts = append(l.alerts, batch...)
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`["1"]`))
		case r.Method == http.MethodDelete && r.URL.Path == "/v1/decisions":
			l.deletes = append(l.deletes, r.URL.Query())
			_, _ = w.Write([]byte(`{"nbDeleted":"1"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(l.Close)
	return l
}

// banned lists the values of the ban decisions posted, in order.
func (l *watcherLAPI) banned() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.alerts {
		for _, d := range a["decisions"].([]any) {
			out = append(out, d.(map[string]any)["value"].(string))
		}
	}
	return out
}

func (l *watcherLAPI) deleted() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, q := range l.deletes {
		out = append(out, q.Encode())
	}
	return out
}

// TestCrowdSecBansPushed: with --crowdsec-machine-credentials, the jail's
// own bans (after failed logins, and `pgwarden bans ban`) are pushed to the
// LAPI as alerts, an unban deletes the decision, and
// pgwarden_crowdsec_alerts_total counts them.
func TestCrowdSecBansPushed(t *testing.T) {
	pg := pgtest.Start(t)
	lapi := newWatcherLAPI(t)
	creds := filepath.Join(t.TempDir(), "machine.yaml")
	require.NoError(t, os.WriteFile(creds, []byte("url: "+lapi.URL+"/\nlogin: pgwarden\npassword: machine-pw\n"), 0o600))
	e := startBanEnv(t, pg, "--crowdsec-machine-credentials", creds)
	require.Equal(t, 0.0, mustMetric(t, e.admin, `pgwarden_crowdsec_alerts_total{result="pushed"}`))

	e.failLogins(t, "127.0.0.2", 3)
	require.Eventually(t, func() bool { return slices.Equal(lapi.banned(), []string{"127.0.0.2"}) },
		fleetWait, 20*time.Millisecond, "the automatic ban was never pushed")
	e.cli(t, "ban", "127.0.0.77", "--for", "1h")
	require.Eventually(t, func() bool { return slices.Equal(lapi.banned(), []string{"127.0.0.2", "127.0.0.77"}) },
		fleetWait, 20*time.Millisecond, "the manual ban was never pushed")
	require.Eventually(t, func() bool {
		return mustMetric(t, e.admin, `pgwarden_crowdsec_alerts_total{result="pushed"}`) == 2
	}, fleetWait, 20*time.Millisecond)
	lapi.mu.Lock()
	manual := lapi.alerts[1]
	lapi.mu.Unlock()
	require.Equal(t, "pgwarden/pgwarden-ban", manual["scenario"])
	d := manual["decisions"].([]any)[0].(map[string]any)
	require.Equal(t, "ban", d["type"])
	dur, err := time.ParseDuration(d["duration"].(string))
	require.NoError(t, err)
	require.True(t, dur > 50*time.Minute && dur <= time.Hour, "the ban's remaining time, got %s", dur)

	e.cli(t, "unban", "127.0.0.77")
	require.Eventually(t, func() bool {
		return slices.Equal(lapi.deleted(), []string{"origin=crowdsec&scopes=Ip&type=ban&value=127.0.0.77"})
	}, fleetWait, 20*time.Millisecond, "the unban never deleted the decision")
	require.Equal(t, 0.0, mustMetric(t, e.admin, `pgwarden_crowdsec_alerts_total{result="dropped"}`))
	require.Equal(t, 0.0, mustMetric(t, e.admin, `pgwarden_crowdsec_alerts_total{result="failed"}`))
}
