package certs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// roleMap is identity (a certificate CN or URI SAN) → roles it may use.
type roleMap map[string]map[string]bool

func (m roleMap) add(identity, role string) {
	if m[identity] == nil {
		m[identity] = map[string]bool{}
	}
	m[identity][role] = true
}

func mergeRoles(ms ...roleMap) roleMap {
	out := roleMap{}
	for _, m := range ms {
		for id, roles := range m {
			for r := range roles {
				out.add(id, r)
			}
		}
	}
	return out
}

// parseMapFlags parses --tls-map-user IDENTITY=ROLE values. The split is at
// the last '=' because URI identities may contain '=' and roles rarely do.
func parseMapFlags(entries []string) (roleMap, error) {
	m := roleMap{}
	var errs []error
	for _, e := range entries {
		i := strings.LastIndexByte(e, '=')
		if i < 0 {
			errs = append(errs, errorf("%s %q: want CN=ROLE", FieldMapUser, e))
			continue
		}
		id, role := e[:i], e[i+1:]
		if err := checkMapEntry(id, role); err != nil {
			errs = append(errs, errorf("%s %q: %w", FieldMapUser, e, err))
			continue
		}
		m.add(normalizeIdentity(id), role)
	}
	return m, errors.Join(errs...)
}

// checkMapEntry refuses what would make a rule broader than it reads:
// wildcards, pg_ident regexes and "+group" membership are not supported, and
// a role postgres would truncate cannot be matched exactly.
func checkMapEntry(id, role string) error {
	switch {
	case id == "":
		return errors.New("empty certificate identity")
	case role == "":
		return errors.New("empty role")
	case strings.HasPrefix(id, "/"):
		return errors.New("regular expressions are not supported; list each identity")
	case role == "*" || id == "*":
		return errors.New("wildcards are not supported; list each identity and role")
	case strings.HasPrefix(role, "+"):
		return errors.New("group membership (+role) is not supported; list each role")
	case len(role) > maxRoleLen:
		return fmt.Errorf("role longer than %d bytes (postgres would truncate it)", maxRoleLen)
	case strings.Contains(id, "://"):
		if _, err := parseURISAN(id); err != nil {
			return err
		}
	}
	return nil
}

// normalizeIdentity makes a URI identity compare as url.URL.String() does
// for the certificate's SAN.
func normalizeIdentity(id string) string {
	if strings.Contains(id, "://") {
		if u, err := parseURISAN(id); err == nil {
			return u
		}
	}
	return id
}

// parseURISAN parses a URI SAN value and returns it in the canonical form
// used to compare it with certificates.
func parseURISAN(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("parsing URI: %w", err)
	}
	if u.Scheme == "" || u.Host == "" {
		return "", errors.New("URI needs a scheme and a host, e.g. spiffe://example.org/ci")
	}
	return u.String(), nil
}

// readMapFile reads a --tls-map-file: one "IDENTITY ROLE" pair per line,
// like pg_ident.conf without the map-name column. '#' starts a comment;
// fields containing spaces may be double-quoted. Errors name file:line.
func readMapFile(file string) (roleMap, error) {
	data, err := readFile(FieldMapFile, file)
	if err != nil {
		return nil, err
	}
	return parseMapFile(file, data)
}

func parseMapFile(file string, data []byte) (roleMap, error) {
	m := roleMap{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		fields, err := splitMapLine(sc.Text())
		if err == nil {
			switch len(fields) {
			case 0:
				continue
			case 2:
				err = checkMapEntry(fields[0], fields[1])
			case 3:
				err = errors.New("want IDENTITY ROLE (pg_ident's map-name column is not used)")
			default:
				err = errors.New("want IDENTITY ROLE")
			}
		}
		if err != nil {
			errs = append(errs, errorf("%s %s:%d: %w", FieldMapFile, file, n, err))
			continue
		}
		m.add(normalizeIdentity(fields[0]), fields[1])
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, errorf("%s %s: reading: %w", FieldMapFile, file, err))
	}
	return m, errors.Join(errs...)
}

// splitMapLine splits on blanks, honouring "double quotes" and stopping at an
// unquoted '#'.
func splitMapLine(line string) ([]string, error) {
	var (
		fields []string
		cur    strings.Builder
		inTok  bool
		quoted bool
	)
	for _, r := range line {
		switch {
		case quoted:
			if r == '"' {
				quoted = false
			} else {
				cur.WriteRune(r)
			}
		case r == '"':
			quoted, inTok = true, true
		case r == '#':
			if inTok {
				fields = append(fields, cur.String())
			}
			return fields, nil
		case r == ' ' || r == '\t' || r == '\r':
			if inTok {
				fields = append(fields, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteRune(r)
			inTok = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inTok {
		fields = append(fields, cur.String())
	}
	return fields, nil
}
