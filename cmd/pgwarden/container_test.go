package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/pgwarden/pgwarden/internal/gateway"
)

// The container files at the repository's root: the image's default
// configuration must be one serve accepts, and compose.yaml must keep
// pgwarden in postgres's network namespace with postgres on loopback.
// No Docker engine runs where the tests run, so this reads the files;
// where `docker compose` works, it also checks compose.yaml with it.

const repoRoot = "../.."

// TestSampleConfig: contrib/pgwarden.yaml, the image's
// /etc/pgwarden/pgwarden.yaml, is a configuration serve accepts, and its
// admin endpoint is where `pgwarden health` looks by default.
func TestSampleConfig(t *testing.T) {
	sample := filepath.Join(repoRoot, "contrib", "pgwarden.yaml")
	cfg, err := parseServeArgs([]string{"--config", sample})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	require.Equal(t, []string{"{{ GetPrivateIP }}:5432"}, cfg.Route.Listen)
	require.Equal(t, "127.0.0.1:5432", cfg.Route.Upstream)
	abs, err := filepath.Abs(filepath.Join(repoRoot, "contrib", "tls", "server.crt"))
	require.NoError(t, err)
	require.Equal(t, abs, cfg.Route.TLSCert, "tls/ is next to the file (/etc/pgwarden/tls in the image)")
	require.Equal(t, defaultHealthURL, "http://"+cfg.Admin+"/readyz")

	// Built for real, with a certificate at hand and a listen address
	// this machine has: every value in the file parses.
	certFile, keyFile, _ := tlsFiles(t)
	cfg, err = parseServeArgs([]string{"--config", sample, "--listen", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	g, err := gateway.Build(&cfg.Config, gateway.Options{})
	require.NoError(t, err)
	require.NoError(t, g.Close())
}

// TestDockerfile: the image carries the sample configuration at the path
// its CMD names, and checks its health with the binary (no shell).
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	require.NoError(t, err)
	df := string(b)
	require.Contains(t, df, "COPY contrib/pgwarden.yaml /etc/pgwarden/pgwarden.yaml\n")
	require.Regexp(t, regexp.MustCompile(`(?m)^HEALTHCHECK .*CMD \["/pgwarden", "health"\]$`), df)
	require.Contains(t, df, `CMD ["serve", "--config", "/etc/pgwarden/pgwarden.yaml"]`)
	require.Contains(t, df, "USER 65532:65532")
}

// composeFile is the part of compose.yaml the checks read.
type composeFile struct {
	Services map[string]struct {
		Image       string         `yaml:"image"`
		Build       any            `yaml:"build"`
		Command     []string       `yaml:"command"`
		NetworkMode string         `yaml:"network_mode"`
		Ports       []string       `yaml:"ports"`
		Volumes     []string       `yaml:"volumes"`
		DependsOn   map[string]any `yaml:"depends_on"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

func TestComposeFile(t *testing.T) {
	path := filepath.Join(repoRoot, "compose.yaml")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var c composeFile
	require.NoError(t, yaml.Unmarshal(b, &c))
	pg, ok := c.Services["postgres"]
	require.True(t, ok, "a postgres service")
	gw, ok := c.Services["pgwarden"]
	require.True(t, ok, "a pgwarden service")

	// pgwarden lives in postgres's network namespace, so its upstream is
	// loopback there; the namespace's owner publishes the port.
	require.Equal(t, "service:postgres", gw.NetworkMode)
	require.Empty(t, gw.Ports, "a service in another's network namespace cannot publish ports")
	require.Contains(t, pg.Ports, "5432:5432")
	require.Equal(t, []string{"postgres", "-c", "listen_addresses=localhost"}, pg.Command, "postgres on loopback only")
	require.Contains(t, gw.DependsOn, "postgres")
	require.NotNil(t, gw.Build, "built from this repository")
	require.Contains(t, gw.Volumes, "./tls:/etc/pgwarden/tls:ro", "the certificates where the default configuration looks")
	require.NotEmpty(t, pg.Healthcheck.Test)

	// The real parser, where it is installed.
	if err := exec.Command("docker", "compose", "version").Run(); err != nil {
		t.Logf("docker compose not available (%v): checked the file's shape only", err)
		return
	}
	cmd := exec.Command("docker", "compose", "-f", path, "config", "--quiet")
	cmd.Env = append(os.Environ(), "POSTGRES_PASSWORD=check")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "docker compose config: %s", out)
}
