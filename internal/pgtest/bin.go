package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrNoPostgres is wrapped by the errors StartE and FindBinDir return when no
// PostgreSQL server binaries (initdb and postgres) can be found.
var ErrNoPostgres = errors.New("no PostgreSQL server binaries (initdb, postgres) found: set PGBIN or install postgresql")

// debianGlob is where Debian and Ubuntu install each major version's server
// binaries; they are not on PATH there, which is why PATH is the last resort.
const debianGlob = "/usr/lib/postgresql/*/bin"

// FindBinDir returns the directory holding initdb and postgres: $PGBIN if set,
// else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin, else
// the directory of initdb on PATH.
func FindBinDir() (string, error) {
	if dir := os.Getenv("PGBIN"); dir != "" {
		// An explicit choice that does not work is an error, not a reason to
		// quietly test against some other version.
		if !hasServer(dir) {
			return "", fmt.Errorf("%w: PGBIN=%s has no initdb and postgres", ErrNoPostgres, dir)
		}
		return dir, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		// Debian's pg_config may point at a version whose server package is
		// not installed (only libpq-dev), hence the check.
		if dir := strings.TrimSpace(string(out)); hasServer(dir) {
			return dir, nil
		}
	}
	if dir := newestDebian(); dir != "" {
		return dir, nil
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if dir := filepath.Dir(initdb); hasServer(dir) {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

// newestDebian returns the highest-versioned /usr/lib/postgresql/N/bin that
// has a server, or "".
func newestDebian() string {
	dirs, _ := filepath.Glob(debianGlob)
	// Sort by version number: lexically "9.6" > "15".
	sort.Slice(dirs, func(i, j int) bool { return debianVersion(dirs[i]) > debianVersion(dirs[j]) })
	for _, dir := range dirs {
		if hasServer(dir) {
			return dir
		}
	}
	return ""
}

// debianVersion turns /usr/lib/postgresql/9.6/bin into 9.6 and 15 into 15.
func debianVersion(bin string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(bin)), 64)
	if err != nil {
		return -1
	}
	return v
}

func hasServer(dir string) bool {
	return dir != "" && isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// HavePsql returns the path of a psql client: the one next to the server
// binaries if there is one, else psql on PATH.
func HavePsql() (string, bool) {
	if dir, err := FindBinDir(); err == nil {
		if p := filepath.Join(dir, "psql"); isExecutable(p) {
			return p, true
		}
	}
	if p, err := exec.LookPath("psql"); err == nil {
		return p, true
	}
	return "", false
}
