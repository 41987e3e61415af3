package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

// TestREADMEListsEveryServeFlag: the README's command-line summary names
// every flag of serve, so none is known only to --help.
func TestREADMEListsEveryServeFlag(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	require.NoError(t, err)
	readme := string(b)
	_, section, ok := strings.Cut(readme, "\n## Command line\n")
	require.True(t, ok, "no Command line section")
	section, _, _ = strings.Cut(section, "\n## ")
	newServeFlags(&serveConfig{}).VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(section, "--"+f.Name+" ") && !strings.Contains(section, "--"+f.Name+"=") {
			t.Errorf("--%s is not in the README's Command line section", f.Name)
		}
	})
}
