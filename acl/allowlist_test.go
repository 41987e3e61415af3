package acl

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/stretchr/testify/require"
)

func TestParseAllowlist(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		entries []string
		want    []string // masked prefixes, sorted
		wantErr string
	}{
		{name: "ipv4 host", entries: []string{"10.0.0.1"}, want: []string{"10.0.0.1/32"}},
		{name: "ipv4 cidr", entries: []string{"10.0.0.0/8"}, want: []string{"10.0.0.0/8"}},
		{name: "host bits masked", entries: []string{"10.1.2.3/8"}, want: []string{"10.0.0.0/8"}},
		{name: "ipv6 host", entries: []string{"2001:db8::1"}, want: []string{"2001:db8::1/128"}},
		{name: "ipv6 cidr", entries: []string{"2001:db8::/32"}, want: []string{"2001:db8::/32"}},
		{name: "mapped host unmapped", entries: []string{"::ffff:10.1.2.3"}, want: []string{"10.1.2.3/32"}},
		{name: "mapped cidr unmapped", entries: []string{"::ffff:10.0.0.0/104"}, want: []string{"10.0.0.0/8"}},
		{name: "whitespace trimmed", entries: []string{"  192.0.2.0/24\t"}, want: []string{"192.0.2.0/24"}},
		{name: "dedupe and sort", entries: []string{"2001:db8::/32", "10.0.0.0/8", "10.0.0.0/8"}, want: []string{"10.0.0.0/8", "2001:db8::/32"}},
		{name: "all v4 and v6", entries: []string{"0.0.0.0/0", "::/0"}, want: []string{"0.0.0.0/0", "::/0"}},

		{name: "no entries", entries: nil, wantErr: `no allowlist: add --allow CIDR (e.g. --allow 10.0.0.0/8)`},
		{name: "only blank", entries: []string{" "}, wantErr: `--allow`},
		{name: "blank among entries", entries: []string{"10.0.0.0/8", ""}, wantErr: `--allow "": empty entry`},
		{name: "leading zeros", entries: []string{"010.0.0.1"}, wantErr: `--allow "010.0.0.1": leading zeros are ambiguous (octal or decimal?); write 10.0.0.1`},
		{name: "leading zeros cidr", entries: []string{"010.000.0.0/8"}, wantErr: `write 10.0.0.0/8`},
		{name: "leading zeros length", entries: []string{"10.0.0.0/08"}, wantErr: `leading zeros in a prefix length are ambiguous; write 10.0.0.0/8`},
		{name: "mapped leading zeros", entries: []string{"::ffff:010.1.2.3"}, wantErr: `not an IP address or CIDR`},
		{name: "v4 /33", entries: []string{"10.0.0.0/33"}, wantErr: `--allow "10.0.0.0/33": prefix length 33 is out of range for IPv4 (0-32)`},
		{name: "v6 /129", entries: []string{"::/129"}, wantErr: `prefix length 129 is out of range for IPv6 (0-128)`},
		{name: "huge length", entries: []string{"10.0.0.0/4096"}, wantErr: `out of range`},
		{name: "negative length", entries: []string{"10.0.0.0/-1"}, wantErr: `bad prefix length "-1"`},
		{name: "missing length", entries: []string{"10.0.0.0/"}, wantErr: `missing prefix length`},
		{name: "hex netmask", entries: []string{"10.0.0.1/00ffffff"}, wantErr: `hex netmasks are not supported; write a prefix length such as /24`},
		{name: "hex netmask contiguous", entries: []string{"10.0.0.0/ffffff00"}, wantErr: `hex netmasks are not supported; write 10.0.0.0/24`},
		{name: "dotted netmask", entries: []string{"10.0.0.0/255.255.0.0"}, wantErr: `netmasks are not supported; write 10.0.0.0/16`},
		{name: "zone", entries: []string{"fe80::1%eth0"}, wantErr: `--allow "fe80::1%eth0": zones are not allowed (a peer address never carries one); write fe80::1`},
		{name: "zone cidr", entries: []string{"fe80::%eth0/64"}, wantErr: `write fe80::/64`},
		{name: "localhost", entries: []string{"localhost"}, wantErr: `--allow "localhost": hostnames are not allowed`},
		{name: "fqdn", entries: []string{"db.example.com"}, wantErr: `hostnames are not allowed: the list is matched against the peer IP and never resolved`},
		{name: "hostname port", entries: []string{"db.example.com:5432"}, wantErr: `hostnames are not allowed`},
		{name: "ip port", entries: []string{"10.0.0.1:5432"}, wantErr: `a port is not allowed; write 10.0.0.1`},
		{name: "v6 port", entries: []string{"[::1]:5432"}, wantErr: `a port is not allowed; write ::1`},
		{name: "brackets", entries: []string{"[::1]"}, wantErr: `brackets are not allowed; write ::1`},
		{name: "unspecified v4", entries: []string{"0.0.0.0"}, wantErr: `write 0.0.0.0/0 to match every IPv4 source`},
		{name: "unspecified v6", entries: []string{"::"}, wantErr: `write ::/0 to match every IPv6 source`},
		{name: "mapped short prefix", entries: []string{"::ffff:0:0/95"}, wantErr: `IPv4-mapped prefix shorter than /96`},
		{name: "two in one", entries: []string{"10.0.0.1 10.0.0.2"}, wantErr: `one address or CIDR per entry; repeat the flag`},
		{name: "comma list", entries: []string{"10.0.0.1,10.0.0.2"}, wantErr: `one address or CIDR per entry`},
		{name: "garbage", entries: []string{"1.2.3"}, wantErr: `--allow "1.2.3": not an IP address or CIDR`},
		{name: "decimal integer", entries: []string{"167772161"}, wantErr: `not an IP address or CIDR`},
		{name: "bad template", entries: []string{"{{ bogus }}"}, wantErr: `--allow "{{ bogus }}": rendering template`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := ParseAllowlist(tc.entries)
			if tc.wantErr != "" {
				require.Error(t, err)
				if !strings.Contains(flagText(err), tc.wantErr) {
					t.Fatalf("error %q does not contain %q", flagText(err), tc.wantErr)
				}
				if !errors.Is(err, ErrInvalidEntry) && !errors.Is(err, ErrNoAllowlist) {
					t.Fatalf("error %v wraps neither ErrInvalidEntry nor ErrNoAllowlist", err)
				}
				return
			}
			require.NoError(t, err)
			if got := prefixStrings(a.Prefixes()); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("prefixes = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAllowlistAllows(t *testing.T) {
	t.Parallel()
	a, err := ParseAllowlist([]string{"10.0.0.0/8", "192.0.2.7", "2001:db8:1::/48", "fe80::/10"})
	require.NoError(t, err)
	tests := []struct {
		ip   string
		want bool
	}{
		{"10.1.2.3", true},
		{"11.0.0.1", false},
		{"192.0.2.7", true},
		{"192.0.2.8", false},
		{"::ffff:10.1.2.3", true},  // dual-stack listener's view of an IPv4 peer
		{"::ffff:192.0.2.7", true}, // and of a /32
		{"::ffff:11.0.0.1", false},
		{"2001:db8:1:2::5", true},
		{"2001:db8:2::5", false},
		{"fe80::1%eth0", true}, // zone dropped, then matched
		{"::1", false},
		{"127.0.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.ip, func(t *testing.T) {
			t.Parallel()
			if got := a.Allows(netip.MustParseAddr(tc.ip)); got != tc.want {
				t.Fatalf("Allows(%s) = %v, want %v", tc.ip, got, tc.want)
			}
		})
	}
	if a.Allows(netip.Addr{}) {
		t.Fatal("the zero Addr must never be allowed")
	}
	var nilList *Allowlist
	if nilList.Allows(netip.MustParseAddr("10.0.0.1")) {
		t.Fatal("a nil allowlist must allow nothing")
	}
}

func TestAllowlistAllowsAnyAndWarnings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		entries  []string
		wantAny  bool
		wantWarn string // substring of some warning, "" for none
	}{
		{name: "narrow", entries: []string{"10.0.0.0/8"}},
		{name: "all v4", entries: []string{"0.0.0.0/0"}, wantAny: true},
		{name: "all v6 only", entries: []string{"::/0"}, wantAny: true, wantWarn: "add 0.0.0.0/0"},
		{name: "both", entries: []string{"::/0", "0.0.0.0/0"}, wantAny: true},
		{name: "host bits", entries: []string{"10.9.9.9/8"}, wantWarn: `allowlist "10.9.9.9/8" has host bits set: it matches every address in 10.0.0.0/8; write 10.9.9.9/32 for the one host, or 10.0.0.0/8 for the network`},
		{name: "host bits v6", entries: []string{"2001:db8::1/64"}, wantWarn: `"2001:db8::1/64" has host bits set: it matches every address in 2001:db8::/64; write 2001:db8::1/128 for the one host`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := ParseAllowlist(tc.entries)
			require.NoError(t, err)
			if a.AllowsAny() != tc.wantAny {
				t.Fatalf("AllowsAny = %v, want %v", a.AllowsAny(), tc.wantAny)
			}
			w := strings.Join(a.Warnings(), "\n")
			if tc.wantWarn == "" && w != "" || !strings.Contains(w, tc.wantWarn) {
				t.Fatalf("warnings %q, want %q", w, tc.wantWarn)
			}
		})
	}
	// ::/0 really does not admit IPv4, which is why the warning exists.
	a, err := ParseAllowlist([]string{"::/0"})
	require.NoError(t, err)
	if a.Allows(netip.MustParseAddr("10.0.0.1")) || a.Allows(netip.MustParseAddr("::ffff:10.0.0.1")) {
		t.Fatal("::/0 must not match IPv4 peers")
	}
}

// TestWarningsNameTheFlag: the warnings render with the caller's names,
// as errors do.
func TestWarningsNameTheFlag(t *testing.T) {
	t.Parallel()
	a, err := ParseList(FieldIgnore, []string{"192.0.2.7/24"})
	require.NoError(t, err)
	ws := a.WarningErrors()
	require.Len(t, ws, 1)
	require.Equal(t, `--ban-ignore "192.0.2.7/24" has host bits set: it matches every address in 192.0.2.0/24; write 192.0.2.7/32 for the one host, or 192.0.2.0/24 for the network`, flagText(ws[0]))
}

func TestParseListNamesFlag(t *testing.T) {
	t.Parallel()
	a, err := ParseList(FieldIgnore, nil)
	require.NoError(t, err)
	if a.Len() != 0 || a.Allows(netip.MustParseAddr("10.0.0.1")) {
		t.Fatal("an empty ParseList must match nothing")
	}
	_, err = ParseList(FieldIgnore, []string{"localhost"})
	var ee *EntryError
	require.ErrorAs(t, err, &ee)
	if ee.Field != FieldIgnore || !strings.HasPrefix(flagText(err), `--ban-ignore "localhost"`) {
		t.Fatalf("error %q does not name --ban-ignore", flagText(err))
	}
}

// TestParseListReportsEveryBadEntry: one line per bad entry, in the
// order given, and the good entries do not hide the bad ones.
func TestParseListReportsEveryBadEntry(t *testing.T) {
	t.Parallel()
	_, err := ParseAllowlist([]string{"010.0.0.1", "10.0.0.0/8", "host.example", "10.0.0.0/33"})
	require.Error(t, err)
	lines := strings.Split(flagText(err), "\n")
	require.Len(t, lines, 3, "%q", flagText(err))
	require.True(t, strings.HasPrefix(lines[0], `--allow "010.0.0.1": leading zeros`), lines[0])
	require.True(t, strings.HasPrefix(lines[1], `--allow "host.example": hostnames are not allowed`), lines[1])
	require.True(t, strings.HasPrefix(lines[2], `--allow "10.0.0.0/33": prefix length 33 is out of range`), lines[2])
	require.ErrorIs(t, err, ErrInvalidEntry)
	var ee *EntryError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, "010.0.0.1", ee.Entry)
}

func TestAllowlistString(t *testing.T) {
	t.Parallel()
	a, err := ParseAllowlist([]string{"2001:db8::/32", "10.0.0.1"})
	require.NoError(t, err)
	if got, want := a.String(), "10.0.0.1/32, 2001:db8::/32"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

// TestTemplatesRealInterfaces uses the loopback interface, which every
// Linux box has.
func TestTemplatesRealInterfaces(t *testing.T) {
	t.Parallel()
	a, err := ParseAllowlist([]string{`{{ GetAllInterfaces | include "flags" "loopback" | attr "address" }}`})
	require.NoError(t, err)
	if !a.Allows(netip.MustParseAddr("127.0.0.1")) {
		t.Fatalf("loopback template gave %s, want 127.0.0.1 allowed", a)
	}
	a, err = ParseAllowlist([]string{`{{ GetAllInterfaces | include "flags" "loopback" | include "type" "ipv4" | attr "network" }}`})
	require.NoError(t, err)
	if !a.Allows(netip.MustParseAddr("127.0.0.2")) {
		t.Fatalf(`attr "network" template gave %s, want the loopback /8`, a)
	}
	_, err = ParseAllowlist([]string{`{{ GetAllInterfaces | include "name" "^no-such-if$" | attr "address" }}`})
	require.ErrorContains(t, err, `template rendered nothing (no interface address matched)`)
	require.Contains(t, flagText(err), `--allow "{{ GetAllInterfaces`)
}

func TestTemplatesFakeInterfaces(t *testing.T) {
	t.Parallel()
	ifs := sockaddr.IfAddrs{
		fakeIf(t, "lo", "127.0.0.1/8"),
		fakeIf(t, "lo", "::1/128"),
		fakeIf(t, "eth0", "10.1.2.3/16"),
		fakeIf(t, "eth0", "fd00::2/64"),
		fakeIf(t, "eth1", "192.0.2.9/31"),
	}
	r := renderer{interfaces: func() (sockaddr.IfAddrs, error) { return ifs, nil }}
	tests := []struct {
		name     string
		entry    string
		want     []string
		wantErr  string
		wantWarn string
	}{
		{name: "network widened", entry: `{{ . | include "name" "^eth0$" | include "type" "ipv4" | attr "network" }}`,
			want: []string{"10.1.0.0/16"}, wantWarn: "network address of a local interface; using 10.1.0.0/16"},
		{name: "several tokens", entry: `{{ . | include "name" "^eth0$" | join "network" " " }}`,
			want: []string{"10.1.0.0/16", "fd00::/64"}},
		{name: "address stays host", entry: `{{ . | include "name" "^eth0$" | join "address" " " }}`,
			want: []string{"10.1.2.3/32", "fd00::2/128"}},
		{name: "string attr keeps length", entry: `{{ . | include "name" "^eth0$" | join "string" " " }}`,
			want: []string{"10.1.0.0/16", "fd00::/64"}, wantWarn: "host bits set"},
		{name: "slash31 address stays host", entry: `{{ . | include "name" "^eth1$" | attr "address" }}`,
			want: []string{"192.0.2.9/32"}},
		{name: "loopback v6 stays host", entry: `{{ . | include "flags" "loopback" | join "network" " " }}`,
			want: []string{"127.0.0.0/8", "::1/128"}},
		{name: "literal around template output", entry: `{{ . | include "name" "^eth0$" | include "type" "ipv4" | attr "address" }}/8`,
			want: []string{"10.0.0.0/8"}},
		{name: "empty render of dot", entry: `{{ . | include "name" "^nope$" | attr "address" }}`, wantErr: "template rendered nothing"},
		{name: "empty render", entry: `{{ GetInterfaceIP "^nope$" }}`, wantErr: "template rendered nothing"},
		{name: "rendered garbage", entry: `{{ . | include "name" "^eth0$" | include "type" "ipv4" | attr "address" }}/33`, wantErr: `rendered "10.1.2.3/33": prefix length 33 is out of range`},
		{name: "rendered hex netmask", entry: `{{ . | include "name" "^eth0$" | include "type" "ipv4" | attr "address" }}/00ffffff`, wantErr: `hex netmasks are not supported`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ps, warns, err := r.entry(tc.entry)
			if tc.wantErr != "" {
				require.NotNil(t, err)
				err.Field, err.Entry = FieldAllow, tc.entry
				require.Contains(t, flagText(err), tc.wantErr)
				return
			}
			require.Nil(t, err)
			if got := prefixStrings(dedupe(ps)); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("prefixes = %v, want %v", got, tc.want)
			}
			if w := strings.Join(warns, "\n"); !strings.Contains(w, tc.wantWarn) {
				t.Fatalf("warnings %q, want %q", w, tc.wantWarn)
			}
		})
	}
}

func TestMaskBits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mask []byte
		want int
	}{
		{[]byte{255, 255, 255, 0}, 24},
		{[]byte{255, 255, 255, 255}, 32},
		{[]byte{0, 0, 0, 0}, 0},
		{[]byte{255, 128, 0, 0}, 9},
		{[]byte{255, 0, 255, 0}, -1},
		{[]byte{0, 255, 255, 255}, -1},
		{[]byte{255, 254, 1, 0}, -1},
	}
	for _, tc := range tests {
		if got := maskBits(tc.mask); got != tc.want {
			t.Errorf("maskBits(%v) = %d, want %d", tc.mask, got, tc.want)
		}
	}
}

func fakeIf(t testing.TB, name, cidr string) sockaddr.IfAddr {
	t.Helper()
	sa, err := sockaddr.NewIPAddr(cidr)
	require.NoError(t, err)
	ifa := sockaddr.IfAddr{SockAddr: sa}
	ifa.Name = name
	if name == "lo" {
		ifa.Flags = 1<<0 | 1<<2 // up | loopback
	} else {
		ifa.Flags = 1 << 0
	}
	return ifa
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
