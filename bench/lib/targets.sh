# The systems under test: a throwaway postgres cluster and the TLS front-ends
# placed before it. Sourced by bench/run.sh, which sets RUN, PGBIN, ports.

# Target registry, in display order. PROXY names the PID[] entry whose CPU and
# RSS belong to the target (empty: postgres itself, no proxy process).
TARGETS=()
declare -A PORT=() SSLMODE=() PROXY=() LABEL=() SKIPPED=()

add_target() { # NAME PORT SSLMODE PROXY LABEL
	TARGETS+=("$1")
	PORT[$1]=$2 SSLMODE[$1]=$3 PROXY[$1]=$4 LABEL[$1]=$5
}

# skip_target NAME REASON: keep the target in the report as a note only.
skip_target() {
	SKIPPED[$1]=$2
	printf 'note\t%s\t-\t%s\n' "$1" "$2" >>"$RESULTS"
	warn "$1 skipped: $2"
}

active_targets() {
	local t
	for t in "${TARGETS[@]}"; do [[ -n ${SKIPPED[$t]:-} ]] || printf '%s\n' "$t"; done
}

proxy_pid() { local p=${PROXY[$1]}; [[ -n $p ]] && echo "${PID[$p]:-}"; return 0; }

# proxy_ok NAME: false, and the target is dropped with a note, once its proxy
# process has died; targets without a proxy process always pass.
proxy_ok() {
	local pid
	[[ -n ${PROXY[$1]} ]] || return 0
	pid=$(proxy_pid "$1")
	[[ -n $pid ]] && alive "$pid" && return 0
	skip_target "$1" "proxy process died during the run: $(tail -n 3 "$RUN/$1.log" | tr '\n' ' ')"
	return 1
}

# on_target NAME CMD...: run a libpq client (psql, pgbench) against a target.
on_target() {
	local t=$1
	shift
	PGPORT=${PORT[$t]} PGSSLMODE=${SSLMODE[$t]} "$@"
}

# Superuser psql over the cluster's private unix socket (peer auth).
pg_admin() {
	as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN/sock" -p "$PORT_PG" -U postgres -d postgres "$@"
}

# One ECDSA P-256 self-signed certificate, shared by every TLS target so that
# all of them do the same handshake work.
make_cert() {
	mkdir -p "$RUN/tls"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
		-keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" 2>"$RUN/openssl.log" ||
		die "openssl req failed: $(cat "$RUN/openssl.log")"
	chmod 600 "$RUN/tls/key.pem"
	chown_pg "$RUN/tls"
	CERT=$RUN/tls/cert.pem KEY=$RUN/tls/key.pem
}

init_cluster() {
	(cd "$RUN" && as_pg "$PGBIN/initdb" -D "$RUN/data" -U postgres -A peer --auth-host=scram-sha-256 \
		-E UTF8 --locale=C --no-sync >"$RUN/initdb.log" 2>&1) || die "initdb failed: $(tail -n 5 "$RUN/initdb.log")"
	mkdir -p "$RUN/sock"
	chown_pg "$RUN/sock"
	# Durability is irrelevant here (read-only workload, throwaway data).
	cat >>"$RUN/data/postgresql.conf" <<-EOF
		listen_addresses = '127.0.0.1'
		port = $PORT_PG
		unix_socket_directories = '$RUN/sock'
		max_connections = $((HOLD_CONNS + 100))
		shared_buffers = 256MB
		work_mem = 64MB
		ssl = on
		ssl_cert_file = '$CERT'
		ssl_key_file = '$KEY'
		password_encryption = 'scram-sha-256'
		fsync = off
		synchronous_commit = off
		full_page_writes = off
		autovacuum = off
	EOF
	cat >"$RUN/data/pg_hba.conf" <<-EOF
		local all postgres           peer
		host  all bench 127.0.0.1/32 scram-sha-256
	EOF
}

start_postgres() {
	start_bg postgres "$RUN/postgres.log" "${AS_PG[@]}" "$PGBIN/postgres" -D "$RUN/data"
	wait_for 30 pg_admin -c 'select 1' || die "postgres did not start: $(tail -n 5 "$RUN/postgres.log")"
}

# Role and database for the benchmark, pgbench data, and the role's SCRAM
# secret for PgBouncer's auth_file.
load_data() {
	pg_admin -c "CREATE ROLE bench LOGIN PASSWORD '$PGPASSWORD'" -c "CREATE DATABASE bench OWNER bench" ||
		die "could not create role/database"
	on_target direct "$PGBIN/pgbench" -i -s "$SCALE" -q -I dtGvp >"$RUN/pgbench-init.log" 2>&1 ||
		die "pgbench -i failed: $(tail -n 5 "$RUN/pgbench-init.log")"
	SCRAM_SECRET=$(pg_admin -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")
	[[ $SCRAM_SECRET == SCRAM-SHA-256\$* ]] || die "bench role has no SCRAM secret: $SCRAM_SECRET"
}

# wait_target NAME: true once a client gets through the target.
target_answers() { on_target "$1" "$PGBIN/psql" -X -Atq -c 'select 1'; }
wait_target() {
	local t=$1 pid
	pid=$(proxy_pid "$t")
	local deadline=$((EPOCHSECONDS + 15))
	until target_answers "$t" >/dev/null 2>&1; do
		if [[ -n $pid ]] && ! alive "$pid"; then
			skip_target "$t" "exited at start: $(tail -n 3 "$RUN/$t.log" | tr '\n' ' ')"
			return 1
		fi
		if ((EPOCHSECONDS >= deadline)); then
			skip_target "$t" "not answering after 15 s: $(tail -n 3 "$RUN/$t.log" | tr '\n' ' ')"
			return 1
		fi
		sleep 0.2
	done
}

# (c) stunnel in server mode. protocol = pgsql answers libpq's SSLRequest with
# 'S' and then relays plaintext to postgres (stunnel's src/protocol.c,
# pgsql_server); stunnel itself sets TCP_NODELAY on both legs by default.
start_stunnel() {
	cat >"$RUN/stunnel.conf" <<-EOF
		foreground = yes
		syslog = no
		pid =
		[pgsql]
		accept = 127.0.0.1:$PORT_STUNNEL
		connect = 127.0.0.1:$PORT_PG
		protocol = pgsql
		cert = $CERT
		key = $KEY
	EOF
	start_bg stunnel "$RUN/stunnel.log" stunnel "$RUN/stunnel.conf"
	wait_target stunnel || stop_bg stunnel
}

# (d) PgBouncer, session pooling, TLS to clients only. The auth_file holds the
# role's SCRAM secret (not its password): PgBouncer then verifies clients
# without PBKDF2 and logs in to postgres by SCRAM pass-through.
start_pgbouncer() {
	printf '"bench" "%s"\n' "$SCRAM_SECRET" >"$RUN/userlist.txt"
	chmod 600 "$RUN/userlist.txt"
	chown_pg "$RUN/userlist.txt"
	cat >"$RUN/pgbouncer.ini" <<-EOF
		[databases]
		bench = host=127.0.0.1 port=$PORT_PG dbname=bench
		[pgbouncer]
		listen_addr = 127.0.0.1
		listen_port = $PORT_PGBOUNCER
		; no unix socket (its default would be /tmp/.s.PGSQL.$PORT_PGBOUNCER)
		unix_socket_dir =
		auth_type = scram-sha-256
		auth_file = $RUN/userlist.txt
		admin_users = bench
		pool_mode = session
		; room for the idle-connection test (defaults: 100 clients, pool of 20)
		max_client_conn = $((HOLD_CONNS + 100))
		default_pool_size = $((HOLD_CONNS + 50))
		client_tls_sslmode = require
		client_tls_cert_file = $CERT
		client_tls_key_file = $KEY
		server_tls_sslmode = disable
		ignore_startup_parameters = extra_float_digits
	EOF
	start_bg pgbouncer "$RUN/pgbouncer.log" "${AS_PG[@]}" pgbouncer "$RUN/pgbouncer.ini"
	wait_target pgbouncer || stop_bg pgbouncer
}

# (e) pgwarden, when a binary is given, with the agreed command line.
start_pgwarden() {
	if [[ -z $PGWARDEN_BIN ]]; then
		skip_target pgwarden "PGWARDEN_BIN=none"
		return 0
	fi
	[[ -x $PGWARDEN_BIN ]] || { skip_target pgwarden "PGWARDEN_BIN=$PGWARDEN_BIN is not executable"; return 0; }
	# shellcheck disable=SC2086 # PGWARDEN_EXTRA_ARGS is a word list by design
	start_bg pgwarden "$RUN/pgwarden.log" "$PGWARDEN_BIN" serve --listen "127.0.0.1:$PORT_PGWARDEN" \
		--upstream "127.0.0.1:$PORT_PG" --allow 127.0.0.0/8 --tls-cert "$CERT" --tls-key "$KEY" $PGWARDEN_EXTRA_ARGS
	wait_target pgwarden || stop_bg pgwarden
}
