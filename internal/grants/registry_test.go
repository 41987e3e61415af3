package grants

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseSource(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "203.0.113.7", want: "203.0.113.7/32"},
		{in: " 203.0.113.7 ", want: "203.0.113.7/32"},
		{in: "::ffff:203.0.113.7", want: "203.0.113.7/32"},
		{in: "::ffff:10.0.0.0/104", want: "10.0.0.0/8"},
		{in: "10.1.2.3/24", want: "10.1.2.0/24"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "2001:db8::/64", want: "2001:db8::/64"},
		{in: "", wantErr: "empty entry"},
		{in: "db.example.com", wantErr: "hostnames are not allowed"},
		{in: "10.0.0.1:5432", wantErr: "a port is not allowed"},
		{in: "fe80::1%eth0", wantErr: "zones are not allowed"},
		{in: "010.0.0.1", wantErr: "leading zeros"},
		{in: "0.0.0.0/0", wantErr: "use --allow"},
		{in: "::/0", wantErr: "use --allow"},
		{in: "{{ GetPrivateIP }}", wantErr: "templates are not allowed"},
		{in: "10.0.0.1 10.0.0.2", wantErr: "one address or CIDR per entry"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSource(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			if got.String() != tc.want {
				t.Fatalf("ParseSource(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
	if got := HostPrefix(addr("::ffff:192.0.2.9")); got.String() != "192.0.2.9/32" {
		t.Fatalf("HostPrefix of a mapped address = %s", got)
	}
}

func TestEffectiveTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		requested time.Duration
		caps      []time.Duration
		want      time.Duration
		wantErr   string
	}{
		{name: "requested below every cap", requested: 20 * time.Minute, caps: []time.Duration{30 * time.Minute, 12 * time.Hour}, want: 20 * time.Minute},
		{name: "rule cap wins", requested: time.Hour, caps: []time.Duration{30 * time.Minute, 12 * time.Hour}, want: 30 * time.Minute},
		{name: "global cap wins", requested: 24 * time.Hour, caps: []time.Duration{0, 12 * time.Hour}, want: 12 * time.Hour},
		{name: "global below rule", requested: 2 * time.Hour, caps: []time.Duration{3 * time.Hour, time.Hour}, want: time.Hour},
		{name: "unset means the smallest cap", requested: 0, caps: []time.Duration{30 * time.Minute, 12 * time.Hour}, want: 30 * time.Minute},
		{name: "unset, no rule cap", requested: 0, caps: []time.Duration{0, 12 * time.Hour}, want: 12 * time.Hour},
		{name: "negative", requested: -time.Minute, caps: []time.Duration{time.Hour}, wantErr: "at least 1s"},
		{name: "below a second", requested: time.Millisecond, caps: []time.Duration{time.Hour}, wantErr: "at least 1s"},
		{name: "nothing at all", requested: 0, wantErr: "no maximum"},
		{name: "cap below minimum", requested: time.Minute, caps: []time.Duration{time.Millisecond}, wantErr: "shorter than 1s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := EffectiveTTL(tc.requested, tc.caps...)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, ErrBadTTL)
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			if got != tc.want {
				t.Fatalf("EffectiveTTL(%s, %v) = %s, want %s", tc.requested, tc.caps, got, tc.want)
			}
		})
	}
}

func TestAddCoversUntilExpiry(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	res, err := r.Add(adminReq("203.0.113.7", 30*time.Minute))
	require.NoError(t, err)
	g := res.Grant
	require.False(t, res.Extended)
	require.Equal(t, 30*time.Minute, res.TTL)
	require.True(t, strings.HasPrefix(g.ID, "g-") && len(g.ID) == 18, g.ID)
	require.Equal(t, r.clock.Now().Add(30*time.Minute), g.Until)
	require.Equal(t, []string{}, g.Users, "no limit is [] in JSON, not null")

	for _, ip := range []string{"203.0.113.7", "::ffff:203.0.113.7"} {
		got, ok := r.Covering("main", addr(ip))
		require.True(t, ok, ip)
		require.Equal(t, g.ID, got.ID)
	}
	for _, ip := range []string{"203.0.113.8", "2001:db8::1", "0.0.0.0"} {
		_, ok := r.Covering("main", addr(ip))
		require.False(t, ok, ip)
	}
	_, ok := r.Covering("main", netip.Addr{})
	require.False(t, ok)

	// One nanosecond before Until it covers; at Until it does not, even
	// before the sweeper runs.
	r.clock.Advance(30*time.Minute - time.Nanosecond)
	_, ok = r.Covering("main", addr("203.0.113.7"))
	require.True(t, ok)
	r.clock.Advance(time.Nanosecond)
	_, ok = r.Covering("main", addr("203.0.113.7"))
	require.False(t, ok, "a grant stops covering at its Until")
	require.Empty(t, r.List())
	_, ok = r.Get(g.ID)
	require.False(t, ok)

	require.Empty(t, r.cb.Expired(), "not swept yet")
	r.Sweep()
	exp := r.cb.Expired()
	require.Len(t, exp, 1)
	require.Equal(t, g.ID, exp[0].ID)
	require.Equal(t, "203.0.113.7/32", exp[0].Source.String())
	require.Equal(t, []string{"grant created", "grant expired"}, r.auditEvents())
	require.Equal(t, 0, r.Len())
	r.Sweep()
	require.Len(t, r.cb.Expired(), 1, "expired once")
}

func TestCoveringRoutesAndPrefixes(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	all, err := r.Add(adminReq("10.1.0.0/16", time.Hour))
	require.NoError(t, err)
	req := adminReq("10.1.2.3", time.Hour)
	req.Route = "reporting"
	one, err := r.Add(req)
	require.NoError(t, err)
	req6 := adminReq("2001:db8:1::/48", time.Hour)
	req6.Route = "main"
	six, err := r.Add(req6)
	require.NoError(t, err)

	tests := []struct {
		route, ip string
		want      string // grant id, "" for none
	}{
		{"reporting", "10.1.2.3", one.Grant.ID}, // the most specific first
		{"main", "10.1.2.3", all.Grant.ID},      // the /32 is for another route
		{"main", "10.1.200.1", all.Grant.ID},
		{"reporting", "10.2.0.1", ""},
		{"main", "2001:db8:1:ffff::5", six.Grant.ID},
		{"reporting", "2001:db8:1::5", ""},
		{"main", "2001:db8:2::5", ""},
	}
	for _, tc := range tests {
		g, ok := r.Covering(tc.route, addr(tc.ip))
		if tc.want == "" {
			require.False(t, ok, "%s %s covered by %+v", tc.route, tc.ip, g)
			continue
		}
		require.True(t, ok, "%s %s", tc.route, tc.ip)
		require.Equal(t, tc.want, g.ID, "%s %s", tc.route, tc.ip)
	}
}

func TestExtendIsOneGrantAuditedTwice(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	req := adminReq("198.51.100.4", 20*time.Minute)
	req.Users = []string{"migrator"}
	req.Databases = []string{"shop"}
	first, err := r.Add(req)
	require.NoError(t, err)

	r.clock.Advance(5 * time.Minute)
	req2 := adminReq("198.51.100.4", 30*time.Minute)
	req2.Users = []string{"reporter", "migrator"}
	req2.Databases = []string{"shop"}
	req2.Reason = "second job"
	second, err := r.Add(req2)
	require.NoError(t, err)
	require.True(t, second.Extended)
	require.Equal(t, first.Grant.ID, second.Grant.ID)
	require.Equal(t, r.clock.Now().Add(30*time.Minute), second.Grant.Until)
	require.Equal(t, []string{"migrator", "reporter"}, second.Grant.Users)
	require.Equal(t, "second job", second.Grant.Reason)
	require.Equal(t, 1, second.Grant.Extensions)
	require.Equal(t, first.Grant.Created, second.Grant.Created)

	// A shorter request never shortens the grant.
	req3 := adminReq("198.51.100.4", time.Minute)
	third, err := r.Add(req3)
	require.NoError(t, err)
	require.Equal(t, second.Grant.Until, third.Grant.Until)
	require.Equal(t, []string{}, third.Grant.Users, "a request without limits lifts them")

	require.Len(t, r.List(), 1)
	require.Equal(t, 1, r.Len())
	require.Equal(t, []string{"grant created", "grant extended", "grant extended"}, r.auditEvents())

	// A different route is a different grant.
	req4 := adminReq("198.51.100.4", time.Minute)
	req4.Route = "other"
	fourth, err := r.Add(req4)
	require.NoError(t, err)
	require.False(t, fourth.Extended)
	require.NotEqual(t, first.Grant.ID, fourth.Grant.ID)
}

func TestLapsedGrantIsNotExtended(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	first, err := r.Add(adminReq("198.51.100.4", time.Minute))
	require.NoError(t, err)
	r.clock.Advance(2 * time.Minute)
	second, err := r.Add(adminReq("198.51.100.4", time.Minute))
	require.NoError(t, err)
	require.False(t, second.Extended)
	require.NotEqual(t, first.Grant.ID, second.Grant.ID)
	require.Len(t, r.cb.Expired(), 1, "the lapsed grant expired, with its callback")
	require.Equal(t, []string{"grant created", "grant expired", "grant created"}, r.auditEvents())
}

func TestTTLCapsInAdd(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t, func(c *Config) { c.MaxTTL = time.Hour })
	req := adminReq("192.0.2.1", 5*time.Hour)
	res, err := r.Add(req)
	require.NoError(t, err)
	require.Equal(t, time.Hour, res.TTL, "--grant-max-ttl caps")
	req = adminReq("192.0.2.2", 0)
	req.MaxTTL = 10 * time.Minute
	res, err = r.Add(req)
	require.NoError(t, err)
	require.Equal(t, 10*time.Minute, res.TTL, "no ttl: the rule's max")
	for _, ttl := range []time.Duration{-time.Second, time.Nanosecond} {
		_, err = r.Add(adminReq("192.0.2.3", ttl))
		require.ErrorIs(t, err, ErrBadTTL)
	}
	require.Len(t, r.List(), 2)
}

func TestMaxGrants(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t, func(c *Config) { c.MaxGrants = 3 })
	for i := range 3 {
		_, err := r.Add(adminReq(fmt.Sprintf("192.0.2.%d", i+1), time.Duration(i+1)*time.Minute))
		require.NoError(t, err)
	}
	_, err := r.Add(adminReq("192.0.2.9", time.Minute))
	require.ErrorIs(t, err, ErrFull)
	require.ErrorContains(t, err, "limit 3")
	_, ok := r.Covering("", addr("192.0.2.9"))
	require.False(t, ok)
	// Extending an existing grant is not a new one.
	res, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.NoError(t, err)
	require.True(t, res.Extended)
	// An expired grant frees its place even before the sweeper runs.
	r.clock.Advance(2*time.Minute + time.Second)
	_, err = r.Add(adminReq("192.0.2.9", time.Minute))
	require.NoError(t, err)
	require.Len(t, r.cb.Expired(), 1)
}

func TestAddValidates(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	long := strings.Repeat("x", 64)
	tests := []struct {
		name    string
		mutate  func(*AddRequest)
		wantErr string
	}{
		{"no source", func(q *AddRequest) { q.Source = netip.Prefix{} }, "no source"},
		{"unmasked", func(q *AddRequest) { q.Source = netip.MustParsePrefix("10.0.0.1/8") }, "not normalised"},
		{"mapped", func(q *AddRequest) { q.Source = netip.MustParsePrefix("::ffff:10.0.0.1/128") }, "not normalised"},
		{"everyone", func(q *AddRequest) { q.Source = netip.MustParsePrefix("0.0.0.0/0") }, "allowlist entry"},
		{"no reason", func(q *AddRequest) { q.Reason = "  " }, "reason is required"},
		{"control in reason", func(q *AddRequest) { q.Reason = "ok\nforged line" }, "control characters"},
		{"invalid utf8 reason", func(q *AddRequest) { q.Reason = "a\xffb" }, "control characters"},
		{"no creator", func(q *AddRequest) { q.CreatedBy = "" }, "created_by is required"},
		{"bad via", func(q *AddRequest) { q.Via = "magic" }, "neither"},
		{"empty user", func(q *AddRequest) { q.Users = []string{""} }, "empty user name"},
		{"long database", func(q *AddRequest) { q.Databases = []string{long} }, "longer than 63 bytes"},
		{"nul user", func(q *AddRequest) { q.Users = []string{"a\x00b"} }, "NUL"},
	}
	for _, tc := range tests {
		req := adminReq("192.0.2.1", time.Minute)
		tc.mutate(&req)
		_, err := r.Add(req)
		require.ErrorIs(t, err, ErrBadRequest, tc.name)
		require.ErrorContains(t, err, tc.wantErr, tc.name)
	}
	require.Empty(t, r.List())
}

func TestPermits(t *testing.T) {
	t.Parallel()
	g := &Grant{ID: "g-0123456789abcdef", Users: []string{"migrator"}, Databases: []string{"shop"}, Rule: `oidc rule "deploy"`}
	require.NoError(t, Permits(g, "migrator", "shop"))
	require.NoError(t, Permits(&Grant{Rule: "admin grant", Users: []string{}, Databases: []string{}}, "anyone", "anything"))

	err := Permits(g, "postgres", "shop")
	var npe *NotPermittedError
	require.ErrorAs(t, err, &npe)
	require.Equal(t, `user "postgres" is not permitted by the access grant for this address (oidc rule "deploy")`, err.Error())
	require.NotContains(t, err.Error(), g.ID, "the message names the rule, never the grant")

	err = Permits(g, "migrator", "postgres")
	require.EqualError(t, err, `database "postgres" is not permitted by the access grant for this address (oidc rule "deploy")`)

	// No database in the startup message means the user's name (postgres'
	// rule), which "shop" is not.
	err = Permits(g, "migrator", "")
	require.EqualError(t, err, `database "migrator" is not permitted by the access grant for this address (oidc rule "deploy")`)
	require.NoError(t, Permits(&Grant{Users: []string{"shop"}, Databases: []string{"shop"}}, "shop", ""))

	// Client-supplied names cannot forge message text.
	err = Permits(g, "x\r\nFATAL: forged\x1b[2J", "shop")
	require.NotContains(t, err.Error(), "\n")
	require.NotContains(t, err.Error(), "\x1b")
	err = Permits(g, strings.Repeat("a", 5000), "shop")
	require.Less(t, len(err.Error()), 300)

	require.Error(t, Permits(nil, "a", "b"))
}

func TestAdmitsTriesEveryCoveringGrant(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	wide := adminReq("10.0.0.0/8", time.Hour)
	wide.Users = []string{"reporter"}
	wide.Rule = "admin grant"
	w, err := r.Add(wide)
	require.NoError(t, err)
	narrow := adminReq("10.0.0.5", time.Hour)
	narrow.Users = []string{"migrator"}
	narrow.Rule = `oidc rule "deploy"`
	narrow.Via = ViaOIDC
	narrow.CreatedBy = "repo:acme/app:ref:refs/heads/main"
	n, err := r.Add(narrow)
	require.NoError(t, err)

	g, err := r.Admits("main", addr("10.0.0.5"), "migrator", "")
	require.NoError(t, err)
	require.Equal(t, n.Grant.ID, g.ID)
	g, err = r.Admits("main", addr("10.0.0.5"), "reporter", "")
	require.NoError(t, err)
	require.Equal(t, w.Grant.ID, g.ID, "the wider grant admits what the narrow one does not")
	_, err = r.Admits("main", addr("10.0.0.5"), "postgres", "")
	require.EqualError(t, err, `user "postgres" is not permitted by the access grant for this address (oidc rule "deploy")`,
		"the most specific grant's reason")
	_, err = r.Admits("main", addr("192.0.2.1"), "migrator", "")
	require.ErrorIs(t, err, ErrNotFound)
	r.clock.Advance(2 * time.Hour)
	_, err = r.Admits("main", addr("10.0.0.5"), "migrator", "")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	a, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.NoError(t, err)
	reqB := adminReq("192.0.2.1", time.Hour)
	reqB.Route = "reporting"
	b, err := r.Add(reqB)
	require.NoError(t, err)
	c, err := r.Add(adminReq("192.0.2.0/24", time.Hour))
	require.NoError(t, err)

	got, err := r.Revoke(c.Grant.ID, RevokeOptions{KeepSessions: true})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, c.Grant.ID, got[0].ID)
	_, ok := r.Covering("main", addr("192.0.2.9"))
	require.False(t, ok, "revocation takes effect at once")

	// By source: every route's grant of exactly that source.
	got, err = r.Revoke("::ffff:192.0.2.1", RevokeOptions{By: "ops"})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{a.Grant.ID, b.Grant.ID}, []string{got[0].ID, got[1].ID})
	require.Empty(t, r.List())

	revoked, keep := r.cb.Revoked()
	require.Len(t, revoked, 3)
	require.Equal(t, []bool{true, false, false}, keep)
	require.Equal(t, []string{"grant created", "grant created", "grant created", "grant revoked", "grant revoked", "grant revoked"}, r.auditEvents())
	last := r.logs.FilterMessage("grant revoked").All()
	require.Equal(t, "ops", last[2].ContextMap()["by"])

	_, err = r.Revoke(a.Grant.ID, RevokeOptions{})
	require.ErrorIs(t, err, ErrNotFound)
	_, err = r.Revoke("192.0.2.77", RevokeOptions{})
	require.ErrorIs(t, err, ErrNotFound)
	_, err = r.Revoke("not-a-thing", RevokeOptions{})
	require.ErrorIs(t, err, ErrBadRequest)
	require.ErrorContains(t, err, "neither a grant id")
}

func TestMarkUsedLogsFirstUseOnce(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	_, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.NoError(t, err)
	g, ok := r.Covering("main", addr("192.0.2.1"))
	require.True(t, ok)
	r.MarkUsed(g, addr("192.0.2.1"))
	r.MarkUsed(g, addr("192.0.2.1"))
	// An extension is the same grant: its first use has been logged.
	_, err = r.Add(adminReq("192.0.2.1", 2*time.Hour))
	require.NoError(t, err)
	g2, _ := r.Covering("main", addr("192.0.2.1"))
	require.NotSame(t, g, g2)
	r.MarkUsed(g2, addr("192.0.2.1"))
	r.MarkUsed(nil, addr("192.0.2.1"))
	r.MarkUsed(&Grant{}, addr("192.0.2.1"))
	require.Equal(t, []string{"grant created", "grant first used", "grant extended"}, r.auditEvents())
	used := r.logs.FilterMessage("grant first used").All()[0].ContextMap()
	require.Equal(t, "192.0.2.1", used["remote"])
	require.Equal(t, "maintenance window", used["reason"])
}

func TestAuditLineFields(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	req := adminReq("192.0.2.1", time.Hour)
	req.Via, req.CreatedBy, req.Rule = ViaOIDC, "repo:acme/app:environment:production", `oidc rule "deploy"`
	req.Claims = map[string]string{"repository_id": "123456", "environment": "production"}
	_, err := r.Add(req)
	require.NoError(t, err)
	line := r.logs.FilterMessage("grant created").All()[0].ContextMap()
	for k, want := range map[string]any{
		"source": "192.0.2.1", "reason": "maintenance window", "created_by": "repo:acme/app:environment:production",
		"via": "oidc", "rule": `oidc rule "deploy"`,
	} {
		require.Equal(t, want, line[k], k)
	}
	require.Equal(t, map[string]string{"repository_id": "123456", "environment": "production"}, line["claims"])
	require.Contains(t, line, "until")
}

func TestCloseRefusesWrites(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	_, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.ErrorIs(t, err, ErrClosed)
	_, err = r.Revoke("192.0.2.1", RevokeOptions{})
	require.ErrorIs(t, err, ErrClosed)
}

func TestConfigRejects(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{{MaxTTL: time.Millisecond}, {MaxGrants: -1}, {SweepInterval: -time.Second}} {
		_, err := New(cfg)
		require.Error(t, err)
	}
}

func TestBackgroundSweeperExpires(t *testing.T) {
	t.Parallel()
	// Real clock, a short grant, a fast sweeper: OnExpire arrives.
	expired := make(chan Grant, 1)
	r, err := New(Config{SweepInterval: 10 * time.Millisecond, OnExpire: func(g Grant) { expired <- g }})
	require.NoError(t, err)
	defer r.Close()
	res, err := r.Add(adminReq("192.0.2.1", time.Second))
	require.NoError(t, err)
	select {
	case g := <-expired:
		require.Equal(t, res.Grant.ID, g.ID)
	case <-time.After(30 * time.Second):
		t.Fatal("the sweeper did not expire the grant")
	}
}

// TestConcurrentLookupsAndWrites runs the accept-path lookup against
// writers under the race detector.
func TestConcurrentLookupsAndWrites(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t, func(c *Config) { c.MaxGrants = 100 })
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if g, ok := r.Covering("main", addr("192.0.2.7")); ok {
					_ = Permits(g, "u", "d")
					r.MarkUsed(g, addr("192.0.2.7"))
				}
				_, _ = r.Admits("main", addr("192.0.2.8"), "u", "d")
			}
		})
	}
	for i := range 200 {
		src := fmt.Sprintf("192.0.2.%d", i%20)
		if _, err := r.Add(adminReq(src, time.Minute)); err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
		if i%3 == 0 {
			_, _ = r.Revoke(src, RevokeOptions{})
		}
		if i%10 == 0 {
			r.clock.Advance(30 * time.Second)
			r.Sweep()
		}
	}
	close(stop)
	wg.Wait()
}
