package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunCerts(t *testing.T) {
	t.Parallel()
	// One initialised directory shared by the `certs issue` cases.
	ready := t.TempDir()
	var out, errOut bytes.Buffer
	require.Equal(t, exitOK, runCerts([]string{"init", "--dir", ready, "--host", "db.example.com", "--host", "10.0.0.5"}, &out, &errOut), errOut.String())

	tests := []struct {
		name       string
		args       []string // "DIR" is replaced by a fresh temp dir, "READY" by the initialised one
		wantCode   int
		wantStdout []string
		wantStderr []string
		wantFiles  []string // relative to DIR/READY
	}{
		{name: "no subcommand", args: nil, wantCode: exitUsage, wantStderr: []string{"pgwarden certs init"}},
		{name: "unknown subcommand", args: []string{"rotate"}, wantCode: exitUsage, wantStderr: []string{`unknown command "rotate"`}},
		{name: "help", args: []string{"help"}, wantCode: exitOK, wantStdout: []string{"certs issue", "--client NAME"}},
		{name: "init help", args: []string{"init", "--help"}, wantCode: exitOK, wantStdout: []string{"Usage: pgwarden certs init", "--host"}},
		{
			name: "init", args: []string{"init", "--dir", "DIR", "--host", "db.example.com", "--host", "127.0.0.1"}, wantCode: exitOK,
			wantStdout: []string{`psql "host=db.example.com port=PORT dbname=DB user=ROLE sslmode=verify-full sslrootcert=DIR/ca.crt"`, "--tls-cert DIR/server.crt --tls-key DIR/server.key"},
			wantFiles:  []string{"ca.crt", "ca.key", "server.crt", "server.key"},
		},
		{
			name: "init --port", args: []string{"init", "--dir", "DIR", "--host", "localhost", "--port", "6432"}, wantCode: exitOK,
			wantStdout: []string{`psql "host=localhost port=6432 dbname=DB user=ROLE sslmode=verify-full sslrootcert=DIR/ca.crt"`},
		},
		{name: "init bad port", args: []string{"init", "--dir", "DIR", "--host", "localhost", "--port", "70000"}, wantCode: exitUsage, wantStderr: []string{"--port 70000: want 1-65535"}},
		{name: "init without dir", args: []string{"init", "--host", "x"}, wantCode: exitUsage, wantStderr: []string{"--dir is required"}},
		{name: "init without host", args: []string{"init", "--dir", "DIR"}, wantCode: exitUsage, wantStderr: []string{"--host is required"}},
		{name: "init bad host", args: []string{"init", "--dir", "DIR", "--host", "a b"}, wantCode: exitUsage, wantStderr: []string{`--host "a b"`}},
		{name: "init unknown flag", args: []string{"init", "--dir", "DIR", "--hots", "x"}, wantCode: exitUsage, wantStderr: []string{"unknown flag: --hots"}},
		{name: "init stray argument", args: []string{"init", "--dir", "DIR", "--host", "x", "extra"}, wantCode: exitUsage, wantStderr: []string{`unexpected argument "extra"`}},
		{name: "init over existing", args: []string{"init", "--dir", "READY", "--host", "x"}, wantCode: exitRuntime, wantStderr: []string{"READY/ca.crt: file already exists; nothing was written (pass --force to replace it)"}},
		{
			name: "issue", args: []string{"issue", "--dir", "READY", "--client", "ci-runner", "--ttl", "12h"}, wantCode: exitOK,
			wantStdout: []string{`psql "host=db.example.com port=PORT dbname=DB user=ci-runner sslmode=verify-full sslrootcert=READY/ca.crt sslcert=READY/ci-runner.crt sslkey=READY/ci-runner.key"`, "--tls-client-ca READY/ca.crt"},
			wantFiles:  []string{"ci-runner.crt", "ci-runner.key"},
		},
		{
			name: "issue --port", args: []string{"issue", "--dir", "READY", "--client", "ci-port", "--port", "5433"}, wantCode: exitOK,
			wantStdout: []string{`psql "host=db.example.com port=5433 dbname=DB user=ci-port `},
		},
		{name: "issue bad name", args: []string{"issue", "--dir", "READY", "--client", "../etc/x"}, wantCode: exitUsage, wantStderr: []string{`--client "../etc/x": may not contain`}},
		{name: "issue bad ttl", args: []string{"issue", "--dir", "READY", "--client", "x", "--ttl", "soon"}, wantCode: exitUsage, wantStderr: []string{`--ttl "soon"`}},
		{name: "issue without CA", args: []string{"issue", "--dir", "DIR", "--client", "x"}, wantCode: exitRuntime, wantStderr: []string{"DIR/ca.crt: reading: no such file or directory", "certs init --dir DIR"}},
		{
			name: "renew", args: []string{"renew", "--dir", "READY"}, wantCode: exitOK,
			wantStdout: []string{"wrote READY/server.crt  (server certificate for [db.example.com 10.0.0.5], serial ", "The CA is unchanged"},
			wantFiles:  []string{"server.crt", "server.key"},
		},
		{name: "renew without dir", args: []string{"renew"}, wantCode: exitUsage, wantStderr: []string{"--dir is required"}},
		{name: "renew without CA", args: []string{"renew", "--dir", "DIR"}, wantCode: exitRuntime, wantStderr: []string{"DIR/ca.crt: reading: no such file or directory"}},
		{name: "renew bad host", args: []string{"renew", "--dir", "READY", "--host", "a b"}, wantCode: exitUsage, wantStderr: []string{`--host "a b"`}},
		{name: "renew stray argument", args: []string{"renew", "--dir", "READY", "db"}, wantCode: exitUsage, wantStderr: []string{`unexpected argument "db"`}},
		{
			name: "init-client-ca", args: []string{"init-client-ca", "--dir", "DIR"}, wantCode: exitOK,
			wantStdout: []string{"pgwarden serve --tls-client-ca DIR/ca.crt --tls-client-crl DIR/crl.pem", "pgwarden certs issue --dir DIR --client NAME", "pgwarden certs crl --dir DIR"},
			wantFiles:  []string{"ca.crt", "ca.key", "crl.pem"},
		},
		{
			name: "init --client-ca-only", args: []string{"init", "--dir", "DIR", "--client-ca-only"}, wantCode: exitOK,
			wantStdout: []string{"client CA certificate"}, wantFiles: []string{"ca.crt", "ca.key", "crl.pem"},
		},
		{name: "client CA with --host", args: []string{"init", "--dir", "DIR", "--client-ca-only", "--host", "x"}, wantCode: exitUsage, wantStderr: []string{"--host does not go with --client-ca-only"}},
		{name: "client CA over existing", args: []string{"init-client-ca", "--dir", "READY"}, wantCode: exitRuntime, wantStderr: []string{"READY/ca.crt: file already exists"}},
		{name: "revoke without target", args: []string{"revoke", "--dir", "READY"}, wantCode: exitUsage, wantStderr: []string{"NAME or SERIAL is required"}},
		{name: "revoke two targets", args: []string{"revoke", "--dir", "READY", "a", "b"}, wantCode: exitUsage, wantStderr: []string{`unexpected argument "b": certs revoke takes one NAME or SERIAL`}},
		{name: "revoke unknown name", args: []string{"revoke", "--dir", "READY", "nobody"}, wantCode: exitUsage, wantStderr: []string{`"nobody" is neither a client name in READY/issued.jsonl nor a serial number`}},
		{name: "revoke bad reason", args: []string{"revoke", "--dir", "READY", "--reason", "lost", "ab12"}, wantCode: exitUsage, wantStderr: []string{`--reason "lost"`}},
		{name: "revoke bad next-update", args: []string{"revoke", "--dir", "READY", "--next-update", "soon", "ab12"}, wantCode: exitUsage, wantStderr: []string{`--next-update "soon": want a positive duration`}},
		{name: "revoke without CA", args: []string{"revoke", "--dir", "DIR", "ab12"}, wantCode: exitRuntime, wantStderr: []string{"DIR/ca.crt: reading: no such file or directory"}},
		{name: "crl", args: []string{"crl", "--dir", "READY", "--next-update", "7d"}, wantCode: exitOK, wantStdout: []string{"wrote READY/crl.pem  (revocation list number ", "0 revoked"}, wantFiles: []string{"crl.pem"}},
		{name: "crl without CA", args: []string{"crl", "--dir", "DIR"}, wantCode: exitRuntime, wantStderr: []string{"DIR/ca.crt: reading"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			subst := func(s string) string {
				return strings.NewReplacer("READY", ready, "DIR", dir).Replace(s)
			}
			args := make([]string, len(tc.args))
			for i, a := range tc.args {
				args[i] = subst(a)
			}
			var stdout, stderr bytes.Buffer
			code := runCerts(args, &stdout, &stderr)
			assert.Equal(t, tc.wantCode, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			for _, want := range tc.wantStdout {
				assert.Contains(t, stdout.String(), subst(want))
			}
			for _, want := range tc.wantStderr {
				assert.Contains(t, stderr.String(), subst(want))
			}
			base := dir
			if len(tc.args) > 2 && tc.args[2] == "READY" {
				base = ready
			}
			for _, f := range tc.wantFiles {
				_, err := os.Stat(filepath.Join(base, f))
				assert.NoError(t, err, f)
			}
		})
	}
}
