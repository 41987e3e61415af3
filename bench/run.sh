#!/usr/bin/env bash
# Compares TLS front-ends for PostgreSQL on one machine, in one run:
#   (a) direct     postgres, plaintext (the physical-limit reference)
#   (b) pg-tls     postgres native TLS (sslmode=require)
#   (c) stunnel    stunnel server mode, protocol = pgsql
#   (d) pgbouncer  PgBouncer, session pooling, client_tls_sslmode = require
#   (e) pgwarden   $PGWARDEN_BIN, when given
# It measures pgbench -S throughput, new-connection rate (pgbench -S -C),
# COPY streaming rate, and proxy memory per idle session, interleaving the
# targets round by round so that machine drift hits all of them alike.
# Everything lives in a /tmp/bench-XXXXXX directory that is removed at exit.
#
# Usage: bash bench/run.sh   (settings below, as environment variables)
# pgwarden is built from this checkout unless PGWARDEN_BIN names a binary;
# PGWARDEN_BIN=none leaves its target out.
set -euo pipefail

# --- settings -----------------------------------------------------------------
: "${PGBIN:=/usr/lib/postgresql/15/bin}"
: "${PG_OS_USER:=postgres}"        # runs postgres and pgbouncer when we are root
: "${PORT_PG:=15432}"              # all ports must lie in 15432-15499
: "${PORT_STUNNEL:=15433}"
: "${PORT_PGBOUNCER:=15434}"
: "${PORT_PGWARDEN:=15435}"
: "${SCALE:=10}"                   # pgbench -i scale
: "${CLIENTS:=8}" "${THREADS:=2}"  # pgbench -c / -j
: "${ROUNDS:=4}"                   # each round runs every test on every target
: "${STEADY_SECS:=3}"              # pgbench -S seconds per target per round
: "${CONN_SECS:=3}"                # pgbench -S -C seconds per target per round
: "${BULK_MB:=200}"                # COPY volume per target per round (10^6 bytes)
: "${HOLD_CONNS:=1000}"            # idle sessions held through each proxy
: "${HOLD_QUERY:=SELECT 1}"        # run once per held session ("" for login only)
: "${MAX_RUNTIME:=360}"            # hard stop for the whole run, seconds
: "${PGWARDEN_BIN:=}"              # pgwarden binary; built from this checkout if unset, "none" skips it
: "${PGWARDEN_EXTRA_ARGS:=}"       # appended to pgwarden's command line
: "${BENCH_GOCACHE:=/tmp/bench-gocache}"  # Go build cache for holdconns and pgwarden, kept across runs
: "${BENCH_OUT:=}"                 # if set: directory that receives results.tsv and report.txt
: "${KEEP:=0}"                     # 1: keep the run directory (logs, configs) for inspection

# Hard time limit: re-exec under timeout(1); its TERM runs the cleanup trap.
if [[ -z ${BENCH_UNDER_TIMEOUT:-} ]]; then
	export BENCH_UNDER_TIMEOUT=1
	exec timeout -k 20 "$MAX_RUNTIME" bash "$0" "$@"
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"
# shellcheck source=lib/targets.sh
source "$HERE/lib/targets.sh"
# shellcheck source=lib/measure.sh
source "$HERE/lib/measure.sh"

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	stop_bg holder
	stop_bg pgwarden
	stop_bg pgbouncer
	stop_bg stunnel
	stop_bg postgres INT # fast shutdown; postgres ends its own backends
	if [[ -n ${RUN:-} && -d $RUN ]]; then
		if ((rc != 0)); then
			log "failed (exit $rc); last lines of the logs:"
			tail -n 5 "$RUN"/*.log >&2 2>/dev/null
		fi
		if [[ $KEEP == 1 ]]; then log "kept $RUN"; else rm -rf "$RUN"; fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'log "time limit or signal: stopping"; exit 143' TERM

preflight() {
	local p tool
	for p in "$PORT_PG" "$PORT_STUNNEL" "$PORT_PGBOUNCER" "$PORT_PGWARDEN"; do
		((p >= 15432 && p <= 15499)) || die "port $p is outside 15432-15499"
		port_free "$p" || die "port $p is already in use"
	done
	for tool in "$PGBIN/initdb" "$PGBIN/postgres" "$PGBIN/pgbench" "$PGBIN/psql" stunnel pgbouncer openssl ss setpriv timeout; do
		command -v "$tool" >/dev/null || die "missing tool: $tool"
	done
	if ((EUID == 0)); then id "$PG_OS_USER" >/dev/null 2>&1 || die "no OS user $PG_OS_USER"; fi
	# stunnel caps its clients at about half of RLIMIT_NOFILE; everyone needs ~2 fds per session.
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	(($(ulimit -n) >= 3 * HOLD_CONNS)) || warn "open-files limit $(ulimit -n) is low for HOLD_CONNS=$HOLD_CONNS"
}

# holdconns (bench/holdconns, a small pgx client that opens and holds
# sessions) and, unless PGWARDEN_BIN names one, pgwarden are built from this
# checkout's module.
build_tools() {
	local go=go
	command -v go >/dev/null || go=/usr/local/go/bin/go
	HOLDCONNS=$BENCH_GOCACHE/holdconns
	(cd "$HERE/.." && GOCACHE=$BENCH_GOCACHE/build "$go" build -o "$HOLDCONNS" ./bench/holdconns) >"$RUN/go-build.log" 2>&1 ||
		die "building holdconns failed: $(tail -n 5 "$RUN/go-build.log")"
	if [[ -z $PGWARDEN_BIN ]]; then
		PGWARDEN_BIN=$BENCH_GOCACHE/pgwarden
		(cd "$HERE/.." && GOCACHE=$BENCH_GOCACHE/build "$go" build -o "$PGWARDEN_BIN" ./cmd/pgwarden) >>"$RUN/go-build.log" 2>&1 ||
			die "building pgwarden failed: $(tail -n 5 "$RUN/go-build.log")"
	elif [[ $PGWARDEN_BIN == none ]]; then
		PGWARDEN_BIN=
	fi
}

# rotate N: the active targets, rotated left by N, so each round starts elsewhere.
rotate() {
	local -a a
	mapfile -t a < <(active_targets)
	local n=${#a[@]} i
	for ((i = 0; i < n; i++)); do echo "${a[(i + $1) % n]}"; done
}

main() {
	preflight
	RUN=$(mktemp -d /tmp/bench-XXXXXX)
	chown_pg "$RUN"
	RESULTS=$RUN/results.tsv
	: >"$RESULTS"
	log "run directory $RUN; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

	# libpq settings shared by every client (pgbench, psql); PGPORT/PGSSLMODE per target.
	export PGHOST=127.0.0.1 PGUSER=bench PGDATABASE=bench PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10
	export PGPASSWORD
	PGPASSWORD=$(openssl rand -hex 16)
	# No client certificate or root CA from ~/.postgresql: sslmode=require stays "encrypt, don't verify".
	export PGSSLCERT=$RUN/none.crt PGSSLKEY=$RUN/none.key PGSSLROOTCERT=$RUN/none-root.crt
	unset PGSERVICE PGSERVICEFILE PGPASSFILE PGOPTIONS PGAPPNAME

	add_target direct "$PORT_PG" disable "" "(a) postgres plaintext"
	add_target pg-tls "$PORT_PG" require "" "(b) postgres native TLS"
	add_target stunnel "$PORT_STUNNEL" require stunnel "(c) stunnel protocol=pgsql"
	add_target pgbouncer "$PORT_PGBOUNCER" require pgbouncer "(d) pgbouncer session+TLS"
	add_target pgwarden "$PORT_PGWARDEN" require pgwarden "(e) pgwarden"
	local t
	for t in "${TARGETS[@]}"; do printf 'label\t%s\t-\t%s\n' "$t" "${LABEL[$t]}" >>"$RESULTS"; done

	log "building holdconns and pgwarden"
	build_tools
	log "creating cluster (scale $SCALE)"
	make_cert
	init_cluster
	start_postgres
	load_data
	log "starting proxies"
	start_stunnel
	start_pgbouncer
	start_pgwarden

	{
		echo "== What each target negotiates (openssl s_client -starttls postgres; psql) =="
		check_header
		for t in $(active_targets); do check_target "$t"; done
	} | tee "$RUN/checks.txt" >&2

	log "warm-up"
	on_target direct "$PGBIN/pgbench" -n -S -c "$CLIENTS" -j "$THREADS" -T 2 >/dev/null 2>&1 || true

	local r m0 o0 s0 m1 o1 secs
	m0=$(machine_ticks) o0=$(own_ticks) s0=$EPOCHSECONDS
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in $(rotate "$r"); do measure_pgbench sel "$t" "$r" "$STEADY_SECS"; done
		for t in $(rotate "$r"); do measure_pgbench conn "$t" "$r" "$CONN_SECS" -C; done
		for t in $(rotate "$r"); do measure_bulk "$t" "$r"; done
	done
	# PgBouncer last: it keeps server connections pooled after clients leave.
	for t in stunnel pgwarden pgbouncer; do [[ -n ${SKIPPED[$t]:-} ]] || measure_hold "$t"; done
	m1=$(machine_ticks) o1=$(own_ticks) secs=$((EPOCHSECONDS - s0))
	# Share of all cores' time over the measurement phase, in %.
	NOISE=$(awk -v m=$((m1 - m0)) -v o=$((o1 - o0)) -v cap="$((secs * $(nproc) * $(getconf CLK_TCK)))" -v s="$secs" 'BEGIN {
		printf "measurement phase: %d s; CPU busy %.0f%% of all cores, this run %.0f%%, other processes ~%.0f%%",
			s, 100 * m / cap, 100 * o / cap, 100 * (m - o) / cap }')
	log "$NOISE"

	report | tee "$RUN/report.txt"
	if [[ -n $BENCH_OUT ]]; then
		mkdir -p "$BENCH_OUT"
		cp "$RESULTS" "$RUN/report.txt" "$BENCH_OUT/"
	fi
	log "done"
}

report() {
	echo
	echo "== pgwarden comparison bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r) =="
	echo "rounds: $ROUNDS; pgbench -S -c $CLIENTS -j $THREADS: ${STEADY_SECS}s/round (plus -C: ${CONN_SECS}s/round);" \
		"COPY: ${BULK_MB} MB/round; idle sessions held: $HOLD_CONNS (each ran '${HOLD_QUERY}')"
	echo "${NOISE:-}; load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	cat "$RUN/checks.txt"
	awk -v targets="${TARGETS[*]}" -v clk="$(getconf CLK_TCK)" -v bulk_mb="$BULK_MB" -v hold_conns="$HOLD_CONNS" \
		-v a=direct -v b=pg-tls -f "$HERE/lib/report.awk" "$RESULTS"
}

main "$@"
