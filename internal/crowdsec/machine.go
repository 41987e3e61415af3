package crowdsec

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// MachineCredentials are a CrowdSec machine's (watcher's) credentials, in
// the format of CrowdSec's own local_api_credentials.yaml, as
// `cscli machines add NAME --auto -f FILE` writes it:
//
//	url: http://127.0.0.1:8080/
//	login: pgwarden
//	password: ...
//
// Other keys (the TLS client-certificate paths newer versions write) are
// ignored: pgwarden logs in with the password.
type MachineCredentials struct {
	URL      string `yaml:"url"`
	Login    string `yaml:"login"`
	Password string `yaml:"password"`
}

// maxCredentialsFile bounds the credentials file read: it holds three
// short values.
const maxCredentialsFile = 64 << 10

// ReadMachineCredentials reads and checks a credentials file. Errors wrap
// ErrConfig and start with "MachineCredentials".
func ReadMachineCredentials(path string) (MachineCredentials, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: MachineCredentials %s: "+format, append([]any{ErrConfig, path}, args...)...)
	}
	if path == "" {
		return MachineCredentials{}, fmt.Errorf("%w: MachineCredentials: the file is required (cscli machines add pgwarden --auto -f FILE)", ErrConfig)
	}
	f, err := os.Open(path)
	if err != nil {
		return MachineCredentials{}, fmt.Errorf("%w: MachineCredentials: %w; create it with `cscli machines add pgwarden --auto -f %s`", ErrConfig, err, path)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCredentialsFile+1))
	if err != nil {
		return MachineCredentials{}, bad("%w", err)
	}
	if len(b) > maxCredentialsFile {
		return MachineCredentials{}, bad("longer than %d bytes; it should hold only url, login and password", maxCredentialsFile)
	}
	var mc MachineCredentials
	if err := yaml.Unmarshal(b, &mc); err != nil {
		return MachineCredentials{}, bad("not CrowdSec's credentials YAML (url, login, password): %s", firstLine(err.Error()))
	}
	mc.URL, mc.Login = strings.TrimSpace(mc.URL), strings.TrimSpace(mc.Login)
	switch {
	case mc.Login == "" || mc.Password == "":
		return MachineCredentials{}, bad("login and password are required; write the file with `cscli machines add pgwarden --auto -f FILE`")
	case strings.ContainsFunc(mc.Login+mc.Password, unicode.IsControl) || !utf8.ValidString(mc.Login+mc.Password):
		return MachineCredentials{}, bad("the login or password contains a control character or invalid UTF-8")
	}
	if err := checkURL(mc.URL); err != nil {
		return MachineCredentials{}, bad("url: %w", err)
	}
	return mc, nil
}

// checkURL checks a LAPI base URL.
func checkURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case s == "":
		return errors.New("the LAPI URL is missing (e.g. http://127.0.0.1:8080/)")
	case err != nil:
		return fmt.Errorf("%q is not a valid URL", s)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: use http:// or https://", s)
	case u.Host == "":
		return fmt.Errorf("%q has no host", s)
	case u.User != nil:
		return fmt.Errorf("%q: credentials do not go in the URL", u.Redacted())
	}
	return nil
}

// SameURL reports whether two LAPI base URLs name the same endpoint
// (scheme and host case-insensitively, a trailing slash ignored).
func SameURL(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host) &&
		strings.TrimSuffix(ua.Path, "/") == strings.TrimSuffix(ub.Path, "/")
}

// headerSafe reports whether s is printable ASCII without spaces (it goes
// into JSON and, for a token, into a header).
func headerSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
