package certs

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// ErrUsage marks errors caused by the arguments (bad host, name or TTL), as
// opposed to the file system; the CLI exits 2 for them.
var ErrUsage = errors.New("invalid argument")

type usageError struct{ error }

func (e usageError) Is(target error) bool { return target == ErrUsage }
func (e usageError) Unwrap() error        { return e.error }

func usageErrorf(format string, args ...any) error {
	return usageError{errorf(format, args...)}
}

// ValidateClientName checks a client name (FieldClient). It becomes both
// the CN (and so, by default, the postgres role) and a file name in the CA
// directory, so it may not contain path separators or "..", and may not be
// "ca" or "server", whose files would collide with the CA's and server's.
func ValidateClientName(name string) error {
	switch {
	case name == "":
		return usageErrorf("%s is required: the certificate's CN, by default the postgres role it may log in as", FieldClient)
	case len(name) > 64:
		return usageErrorf("%s %q: longer than 64 bytes (the X.509 limit for a CN)", FieldClient, name)
	case strings.ContainsAny(name, `/\`) || strings.Contains(name, ".."):
		return usageErrorf("%s %q: may not contain '/', '\\' or '..': it is used as a file name", FieldClient, name)
	case strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-"):
		return usageErrorf("%s %q: may not start with '.' or '-'", FieldClient, name)
	case strings.EqualFold(name, "ca") || strings.EqualFold(name, "server"):
		return usageErrorf("%s %q: reserved: %s.crt would replace the %s certificate", FieldClient, name, name, strings.ToLower(name))
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-@", r)) {
			return usageErrorf("%s %q: use letters, digits and . _ - @ only (map other role names with %s)", FieldClient, name, FieldMapUser)
		}
	}
	return nil
}

// ParseTTL parses a TTL (FieldTTL): a Go duration ("12h", "90m") or whole
// days ("30d").
func ParseTTL(s string) (time.Duration, error) { return ParseDuration(FieldTTL, s) }

// ParseDuration parses a positive duration of field: a Go duration
// ("12h", "90m") or whole days ("30d").
func ParseDuration(field fielderr.Field, s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, usageErrorf("%s %q: want a positive duration such as 12h or 30d", field, s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, usageErrorf("%s %q: want a positive duration such as 12h or 30d", field, s)
	}
	return d, nil
}

// parseHosts splits host names (FieldHost) into DNS names and IPs, lowercased and
// de-duplicated, in order.
func parseHosts(hosts []string) (dnsNames []string, ips []net.IP, names []string, err error) {
	if len(hosts) == 0 {
		return nil, nil, nil, usageErrorf("%s is required: the name (or IP) clients connect to, as in psql host=NAME", FieldHost)
	}
	seen := map[string]bool{}
	var errs []error
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
				names = append(names, ip.String())
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if err := checkDNSName(name); err != nil {
			errs = append(errs, usageErrorf("%s %q: %w", FieldHost, h, err))
			continue
		}
		if !seen[name] {
			seen[name] = true
			dnsNames = append(dnsNames, name)
			names = append(names, name)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, nil, usageError{err}
	}
	return dnsNames, ips, names, nil
}

// checkDNSName accepts what libpq's verify-full can match: LDH labels
// (underscore tolerated), optionally a leading "*." wildcard label.
func checkDNSName(name string) error {
	if name == "" {
		return errors.New("empty host name")
	}
	if len(name) > 253 {
		return errors.New("longer than 253 characters")
	}
	rest, _ := strings.CutPrefix(name, "*.")
	for label := range strings.SplitSeq(rest, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("not a valid DNS name (empty or over-long label)")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("not a valid DNS name (label starts or ends with '-')")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("not a valid DNS name or IP address (character %q)", r)
			}
		}
	}
	return nil
}
