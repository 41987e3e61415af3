#!/usr/bin/env bash
# .ci/testssl.sh: scan pgwarden's listener with testssl.sh.
#
# It builds pgwarden, starts `pgwarden serve` on a free loopback port and
# runs `testssl --starttls postgres` (protocols, then every cipher per
# protocol) against it, once with the ECDSA pair `pgwarden certs init`
# makes and once with an RSA pair (Go negotiates ECDHE_RSA suites only with
# an RSA key, so an ECDSA-only scan could not see them). It fails if any
# protocol below TLS 1.2 is offered, or any cipher that is not AEAD
# (anything but GCM, CCM, ChaCha20-Poly1305: CBC, RC4, 3DES, NULL, ...).
#
# The upstream is a closed port: TLS is over before pgwarden dials it, and
# testssl never gets that far.
#
#   bash .ci/testssl.sh                    # scan (skips if testssl is absent)
#   bash .ci/testssl.sh --check-json FILE  # only judge a testssl --jsonfile
#   bash .ci/testssl.sh --self-test        # the judge on hand-made findings
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=/usr/local/go/bin:$PATH

SCAN_TIMEOUT=${TESTSSL_TIMEOUT:-180} # seconds per scan; one takes ~10 s

# check_json FILE: judge testssl's flat JSON findings. It prints a summary
# and returns 1 on any violation or if the scan looks incomplete. awk, not
# jq or python: neither is on a bare Debian machine, and the flat format
# is one object per finding with plain "key" : "value" members.
check_json() {
	awk '
	function field(k,   m) {
		if (!match($0, "\"" k "\"[ \t\r\n]*:[ \t\r\n]*\"[^\"]*\"")) return ""
		m = substr($0, RSTART, RLENGTH)
		sub(/^"[^"]*"[ \t\r\n]*:[ \t\r\n]*"/, "", m)
		sub(/"$/, "", m)
		return m
	}
	function bad(msg) { problems[++nbad] = msg }
	BEGIN { RS = "}"; legacy["SSLv2"]; legacy["SSLv3"]; legacy["TLS1"]; legacy["TLS1_1"] }
	{
		id = field("id"); sev = field("severity"); fin = field("finding")
		if (id == "") next
		if (sev == "FATAL" || id == "scanProblem") bad("scan problem: " id ": " fin)
		if ((id in legacy) || id == "TLS1_2" || id == "TLS1_3") {
			seen[id] = 1
			if (fin ~ /^not offered/) next
			if (id in legacy) { bad("protocol " id " is " fin); next }
			if (fin ~ /^offered/) offered = offered " " id
			else bad("protocol " id ": unexpected finding \"" fin "\"")
			next
		}
		if (id ~ /^cipher-/) {
			n = split(fin, f, /[ \t]+/)
			name = f[n]                       # IANA name, last column
			ncipher++
			ciphers = ciphers "\n    " fin
			if (id !~ /^cipher-tls1_[23]_/) bad("cipher offered with a protocol below TLS 1.2: " fin)
			if (fin !~ /GCM|CCM|CHACHA20[-_]POLY1305/) bad("non-AEAD cipher offered: " name)
		}
	}
	END {
		for (p in legacy) if (!(p in seen)) bad("no finding for protocol " p ": incomplete scan")
		if (offered == "") bad("neither TLS 1.2 nor TLS 1.3 offered: the scan did not reach the listener")
		if (ncipher == 0) bad("no cipher found: the cipher scan did not run")
		printf "  protocols offered:%s\n", offered
		printf "  ciphers offered (%d):%s\n", ncipher, ciphers
		for (i = 1; i <= nbad; i++) printf "  FAIL: %s\n", problems[i]
		exit (nbad > 0)
	}' "$1"
}

# self_test: the judge passes a clean scan and fails each violation.
self_test() {
	local dir rc=0 want got name
	dir=$(mktemp -d)
	finding() { printf ',{ "id" : "%s", "ip" : "127.0.0.1/127.0.0.1", "port" : "5432", "severity" : "%s", "finding" : "%s" }\n' "$@"; }
	base() {
		echo '[{ "id" : "service", "severity" : "INFO", "finding" : "postgres" }'
		finding SSLv2 OK "not offered"
		finding SSLv3 OK "not offered"
		finding TLS1 INFO "${1:-not offered}"
		finding TLS1_1 INFO "not offered"
		finding TLS1_2 OK "offered"
		finding TLS1_3 OK "offered with final"
		finding cipher-tls1_2_xc02b INFO "TLS 1.2   xc02b   ECDHE-ECDSA-AES128-GCM-SHA256     ECDH 253   AESGCM      128      TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
		finding cipher-tls1_3_x1301 INFO "TLS 1.3   x1301   TLS_AES_128_GCM_SHA256            ECDH 253   AESGCM      128      TLS_AES_128_GCM_SHA256"
	}
	base >"$dir/good.json" && echo ']' >>"$dir/good.json"
	{ base && finding cipher-tls1_2_xc009 INFO "TLS 1.2   xc009   ECDHE-ECDSA-AES128-SHA            ECDH 253   AES         128      TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA" && echo ']'; } >"$dir/cbc.json"
	{ base && finding cipher-tls1_2_xc012 INFO "TLS 1.2   xc012   ECDHE-RSA-DES-CBC3-SHA            ECDH 253   3DES        168      TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA" && echo ']'; } >"$dir/3des.json"
	{ base "offered (deprecated)" && finding cipher-tls1_xc02b INFO "TLS 1   xc02b   ECDHE-ECDSA-AES128-GCM-SHA256 ECDH 253 AESGCM 128 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" && echo ']'; } >"$dir/tls10.json"
	echo '[{ "id" : "scanProblem", "severity" : "FATAL", "finding" : "Can'"'"'t connect" }]' >"$dir/nothing.json"
	for name in good cbc 3des tls10 nothing; do
		want=fail
		[ "$name" = good ] && want=pass
		if check_json "$dir/$name.json" >"$dir/$name.out"; then got=pass; else got=fail; fi
		if [ "$got" != "$want" ]; then
			echo "self-test: $name.json: judged $got, want $want" >&2
			cat "$dir/$name.out" >&2
			rc=1
		fi
	done
	rm -rf "$dir"
	if [ "$rc" -eq 0 ]; then
		echo "testssl judge self-test: ok (1 clean scan passed, 4 bad ones failed)"
	fi
	return "$rc"
}

case "${1:-}" in
--check-json)
	check_json "$2"
	exit
	;;
--self-test)
	self_test
	exit
	;;
"") ;;
*)
	echo "usage: $0 [--check-json FILE | --self-test]" >&2
	exit 2
	;;
esac

TESTSSL=$(command -v testssl || command -v testssl.sh || true)
if [ -z "$TESTSSL" ]; then
	echo "testssl not installed: skipped"
	exit 0
fi

self_test

work=$(mktemp -d)
pid= scanner=
cleanup() {
	local p
	for p in $scanner $pid; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/pgwarden" ./cmd/pgwarden
"$work/pgwarden" certs init --dir "$work/ecdsa" --host localhost --host 127.0.0.1 >/dev/null
mkdir -m 700 "$work/rsa"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
	-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "extendedKeyUsage=serverAuth" \
	-keyout "$work/rsa/server.key" -out "$work/rsa/server.crt" 2>"$work/openssl.err" ||
	{ cat "$work/openssl.err" >&2; exit 1; }

# scan NAME DIR: serve DIR/server.{crt,key} and judge testssl's findings.
scan() {
	local name=$1 dir=$2 log="$work/$1.log" json="$work/$1.json" addr= i rc start=$SECONDS
	# Created before pgwarden starts: the first grep below can run before
	# the background job has opened its redirection.
	: >"$log"
	"$work/pgwarden" serve --listen 127.0.0.1:0 --upstream 127.0.0.1:1 --allow 127.0.0.1/32 \
		--tls-cert "$dir/server.crt" --tls-key "$dir/server.key" --drain-timeout 1s </dev/null 2>"$log" &
	pid=$!
	for i in $(seq 200); do
		if grep -q '"msg":"pgwarden started"' "$log"; then
			addr=$(grep -o '"msg":"listening".*"address":"127\.0\.0\.1:[0-9]*"' "$log" | grep -o '127\.0\.0\.1:[0-9]*' | head -1)
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$addr" ]; then
		echo "pgwarden did not start:" >&2
		cat "$log" >&2
		return 1
	fi
	echo "--- $name: testssl --starttls postgres $addr"
	# In the background so that a signal to this script runs its trap at
	# once (bash defers traps until a foreground command ends); timeout
	# passes the signal on to testssl.
	timeout -k 10 "$SCAN_TIMEOUT" "$TESTSSL" --starttls postgres --protocols --cipher-per-proto --quiet \
		--warnings off --color 0 --jsonfile "$json" "$addr" </dev/null >"$work/$name.out" 2>&1 &
	scanner=$!
	rc=0
	wait "$scanner" || rc=$?
	scanner=
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=
	# testssl exits 24x for its own errors (no connection, bad options);
	# 124/137 are timeout's.
	if [ "$rc" -ge 124 ] || [ ! -s "$json" ]; then
		echo "testssl failed (exit $rc):" >&2
		tail -30 "$work/$name.out" >&2
		return 1
	fi
	if ! check_json "$json"; then
		echo "testssl output:" >&2
		cat "$work/$name.out" >&2
		return 1
	fi
	echo "  ($((SECONDS - start))s)"
}

failed=0
scan ecdsa "$work/ecdsa" || failed=1
scan rsa "$work/rsa" || failed=1
if [ "$failed" -ne 0 ]; then
	echo "testssl: FAILED: pgwarden offers a protocol below TLS 1.2 or a non-AEAD cipher (see above)" >&2
	exit 1
fi
echo "testssl: ok: only TLS 1.2+ and AEAD ciphers offered"
