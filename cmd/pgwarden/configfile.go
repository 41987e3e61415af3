package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/pgwarden/pgwarden/internal/gateway"
)

// The YAML file of `serve --config`: its keys are the flag names, a
// repeatable flag takes a list, and a routes: list holds maps of the route
// keys. Every problem with it is a configuration error (exit 2) on one
// line naming the file, the line and the key.

// pathAnnotation marks a flag whose value names a file or directory (see
// pathVar); its value says how to find the path in the value.
const pathAnnotation = "pgwarden/path"

// Kinds of path flags.
const (
	pathFile     = "file"     // the value is a path
	pathUpstream = "upstream" // a unix socket path, or HOST:PORT (left alone)
	pathOrURL    = "url"      // an http(s) URL (left alone), or a path
)

// pathVar defines a string flag naming a file. A relative path in a config
// file is taken relative to the file's directory, as Prometheus and most
// daemons read theirs, so the file works wherever serve is started; on the
// command line it stays relative to the working directory, as any program's
// arguments are. A new flag naming a file gets this by being declared here.
func pathVar(fs *pflag.FlagSet, p *string, name, usage string) {
	fs.StringVar(p, name, "", usage)
	markPath(fs, name, pathFile)
}

// markPath declares flag name's value a path of the given kind.
func markPath(fs *pflag.FlagSet, name, kind string) {
	if err := fs.SetAnnotation(name, pathAnnotation, []string{kind}); err != nil {
		panic(err) // a programming error: no such flag
	}
}

// resolvePath returns value as read in a config file in dir: a relative
// path of a path flag becomes dir/value; anything else is returned as is.
func resolvePath(f *pflag.Flag, dir, value string) string {
	kind := f.Annotations[pathAnnotation]
	if len(kind) == 0 || value == "" {
		return value
	}
	switch kind[0] {
	case pathOrURL:
		if strings.HasPrefix(value, "https://") || strings.HasPrefix(value, "http://") || filepath.IsAbs(value) {
			return value
		}
		return filepath.Join(dir, value)
	case pathUpstream:
		// gateway.parseUpstream takes a value starting with "/" or "."
		// (after an optional "unix:") for a socket; HOST:PORT is no path.
		rest, unix := strings.CutPrefix(value, "unix:")
		if !strings.HasPrefix(rest, ".") {
			return value
		}
		resolved := filepath.Join(dir, rest)
		if unix {
			return "unix:" + resolved
		}
		return resolved
	default:
		if filepath.IsAbs(value) {
			return value
		}
		return filepath.Join(dir, value)
	}
}

// configFile is the --config file being applied.
type configFile struct {
	path string // as given
	dir  string // its directory, absolute: where relative paths in it start
}

// at names the file and a line in errors.
func (f *configFile) at(line int) string {
	if line > 0 {
		return fmt.Sprintf("--config %s: line %d", f.path, line)
	}
	return "--config " + f.path
}

// keyValue is one key of a YAML map and its value.
type keyValue struct {
	key   string
	line  int
	value *yaml.Node
}

// load reads and parses the file into its top-level keys, in file order.
func (f *configFile) load() ([]keyValue, error) {
	data, err := os.ReadFile(f.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			wd, _ := os.Getwd()
			return nil, usageError{fmt.Errorf("--config %s: no such file (a relative path starts in the working directory, %s): give the path of the YAML file, or leave --config out", f.path, wd)}
		}
		return nil, usageError{fmt.Errorf("--config %s: reading: %w (check the path and that pgwarden may read it)", f.path, err)}
	}
	abs, err := filepath.Abs(f.path)
	if err != nil {
		return nil, usageError{fmt.Errorf("--config %s: %w", f.path, err)}
	}
	f.dir = filepath.Dir(abs)
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3's syntax errors name their line ("yaml: line 3: ...").
		return nil, usageError{fmt.Errorf("--config %s: not valid YAML: %s; fix the syntax there",
			f.path, oneLine(strings.TrimPrefix(err.Error(), "yaml: ")))}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil // an empty file sets nothing
	}
	return f.mapping(doc.Content[0], "the file")
}

// mapping returns the keys of a YAML map, refusing anything else and keys
// given twice (a later one would silently win).
func (f *configFile) mapping(n *yaml.Node, what string) ([]keyValue, error) {
	if n.Kind != yaml.MappingNode {
		return nil, usageError{fmt.Errorf("%s: %s must be a map of keys to values (keys are the flag names, e.g. \"upstream: 127.0.0.1:5432\")", f.at(n.Line), what)}
	}
	seen := map[string]int{}
	out := make([]keyValue, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, usageError{fmt.Errorf("%s: a key must be a plain name such as upstream", f.at(k.Line))}
		}
		if first, dup := seen[k.Value]; dup {
			return nil, usageError{fmt.Errorf("%s: key %q given twice (first on line %d): keep one", f.at(k.Line), k.Value, first)}
		}
		seen[k.Value] = k.Line
		out = append(out, keyValue{key: k.Value, line: k.Line, value: v})
	}
	return out, nil
}

// applyFile sets from the YAML file every flag not given on the command
// line; the flags of notKeys (check's own) are not keys of the file.
func applyFile(c *serveConfig, fs *pflag.FlagSet, fromCLI map[string]bool, notKeys *pflag.FlagSet) error {
	f := &configFile{path: c.ConfigFile}
	keys, err := f.load()
	if err != nil {
		return err
	}
	for _, kv := range keys {
		switch {
		case kv.key == "routes":
			routes, err := f.routes(kv)
			if err != nil {
				return err
			}
			c.Routes = routes
		case kv.key == oidcKey:
			present := make(map[string]bool, len(keys))
			for _, other := range keys {
				present[other.key] = true
			}
			if err := applyOIDC(c, f, kv, present, fs, fromCLI); err != nil {
				return err
			}
		case kv.key == "config" || fs.Lookup(kv.key) == nil || notKeys != nil && notKeys.Lookup(kv.key) != nil:
			return usageError{fmt.Errorf("%s: unknown key %q (keys are the flag names, e.g. listen, upstream, allow, tls-cert; pgwarden serve --help lists them)", f.at(kv.line), kv.key)}
		case fromCLI[kv.key]:
			// The command line wins.
		default:
			if err := f.set(fs, "", kv); err != nil {
				return err
			}
		}
	}
	return nil
}

// routes reads the routes: list; each entry takes the route keys.
func (f *configFile) routes(kv keyValue) ([]gateway.RouteConfig, error) {
	if kv.value.Kind != yaml.SequenceNode {
		return nil, usageError{fmt.Errorf("%s: routes must be a list of maps with keys like listen, upstream, allow", f.at(kv.line))}
	}
	routes := make([]gateway.RouteConfig, 0, len(kv.value.Content))
	for i, entry := range kv.value.Content {
		at := fmt.Sprintf("routes[%d]", i)
		keys, err := f.mapping(entry, at)
		if err != nil {
			return nil, err
		}
		var rc gateway.RouteConfig
		fs := pflag.NewFlagSet("route", pflag.ContinueOnError)
		routeFlags(fs, &rc)
		for _, kv := range keys {
			if !routeKeys[kv.key] {
				return nil, usageError{fmt.Errorf("%s: %s: unknown key %q (a route takes %s)", f.at(kv.line), at, kv.key, strings.Join(sortedKeys(routeKeys), ", "))}
			}
			if err := f.set(fs, at+": ", kv); err != nil {
				return nil, err
			}
		}
		if rc.Name == "" {
			rc.Name = fmt.Sprintf("route%d", i)
		}
		routes = append(routes, rc)
	}
	return routes, nil
}

// set sets flag kv.key from a YAML scalar or, for a repeatable flag, a list
// of scalars. A path flag's relative paths start in the file's directory.
func (f *configFile) set(fs *pflag.FlagSet, prefix string, kv keyValue) error {
	flag := fs.Lookup(kv.key)
	at := f.at(kv.line) + ": " + prefix + kv.key
	var values []string
	switch kv.value.Kind {
	case yaml.ScalarNode:
		values = []string{kv.value.Value}
	case yaml.SequenceNode:
		if flag.Value.Type() != "stringArray" {
			return usageError{fmt.Errorf("%s takes one value, not a list", at)}
		}
		for _, item := range kv.value.Content {
			if item.Kind != yaml.ScalarNode {
				return usageError{fmt.Errorf("%s: list items must be plain values", at)}
			}
			values = append(values, item.Value)
		}
	default:
		return usageError{fmt.Errorf("%s must be a value or a list of values", at)}
	}
	for _, v := range values {
		if err := fs.Set(kv.key, resolvePath(flag, f.dir, v)); err != nil {
			return usageError{fmt.Errorf("%s: %w", at, err)}
		}
	}
	return nil
}

// oneLine folds a multi-line message (yaml.v3's type errors) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}
