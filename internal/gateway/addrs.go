package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	socktmpl "github.com/hashicorp/go-sockaddr/template"

	"github.com/pgwarden/pgwarden/internal/netaddr"
	"github.com/pgwarden/pgwarden/proxy"
)

// InheritedPrefix marks a listen address as sockets passed in by a
// supervisor: "systemd:NAME" takes those named NAME, "systemd:" all.
const InheritedPrefix = "systemd:"

// resolveListen turns one listen address into the addresses to bind. HOST
// may be an IP, a name (every address it resolves to), or a go-sockaddr
// template, rendered now; a template may yield several addresses. A
// template that renders to nothing is an error: passed on as ":PORT" it
// would mean every interface, the opposite of what was asked.
//
// "systemd:NAME" (or "systemd:") names sockets a supervisor passes in
// (Options.Inherited) and is kept as it is.
func resolveListen(spec string) ([]string, error) {
	if strings.HasPrefix(spec, InheritedPrefix) {
		return []string{spec}, nil
	}
	host, port, err := splitListen(spec)
	if err != nil {
		return nil, errorf("%s %q: %w", FieldListen, spec, err)
	}
	if _, err := netaddr.Port(port, 0); err != nil {
		return nil, errorf("%s %q: %w", FieldListen, spec, err)
	}
	var hosts []string
	switch {
	case strings.Contains(host, "{{"):
		out, err := socktmpl.Parse(host)
		if err != nil {
			return nil, errorf("%s %q: rendering the template: %w", FieldListen, spec, err)
		}
		hosts = strings.Fields(out)
		if len(hosts) == 0 {
			return nil, errorf("%s %q: the template rendered no address on this machine; refusing to fall back to all interfaces (check the interface name or use an IP)", FieldListen, spec)
		}
		for _, h := range hosts {
			if _, err := netip.ParseAddr(h); err != nil {
				return nil, errorf("%s %q: the template rendered %q, which is not an IP address (end it with | attr \"address\")", FieldListen, spec, h)
			}
		}
	case host == "":
		hosts = []string{""} // explicit ":PORT": every interface, as written
	default:
		if _, err := netip.ParseAddr(host); err == nil {
			hosts = []string{host}
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := net.DefaultResolver.LookupHost(ctx, host)
		cancel()
		if err != nil || len(addrs) == 0 {
			return nil, errorf("%s %q: %q is neither an IP address nor a name that resolves: %v", FieldListen, spec, host, err)
		}
		hosts = addrs
	}
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, net.JoinHostPort(h, port))
	}
	return out, nil
}

// splitListen splits HOST:PORT where HOST may be a template containing
// colons (an IPv6 network in a filter, say): the port follows the last "}}".
func splitListen(spec string) (host, port string, err error) {
	if i := strings.LastIndex(spec, "}}"); i >= 0 {
		rest := spec[i+2:]
		if !strings.HasPrefix(rest, ":") || len(rest) < 2 {
			return "", "", fmt.Errorf("expected :PORT after the template")
		}
		return strings.TrimSpace(spec[:i+2]), rest[1:], nil
	}
	host, port, err = net.SplitHostPort(spec)
	if err != nil {
		return "", "", fmt.Errorf("expected HOST:PORT ([IPv6]:PORT for IPv6): %w", err)
	}
	return host, port, nil
}

// parseUpstream turns an upstream address into a proxy.Upstream and refuses
// anything but loopback or a unix socket unless allowRemote is set: the point of the
// gateway is that postgres is not reachable from elsewhere, and the
// gateway's upstream leg is plaintext.
//
// Accepted forms: HOST:PORT; /path/.s.PGSQL.5432 (the socket file);
// /path/dir:5432 (directory and port, as libpq's host and port);
// /path/dir (directory, port 5432); each optionally prefixed "unix:".
func parseUpstream(spec string, allowRemote bool) (proxy.Upstream, error) {
	path := strings.TrimPrefix(spec, "unix:")
	if strings.HasPrefix(path, "/") || strings.HasPrefix(path, ".") {
		return parseUnixUpstream(spec, path)
	}
	host, port, err := net.SplitHostPort(spec)
	if err != nil {
		return proxy.Upstream{}, errorf("%s %q: expected HOST:PORT or a unix socket path: %w", FieldUpstream, spec, err)
	}
	if _, err := netaddr.Port(port, 1); err != nil {
		return proxy.Upstream{}, errorf("%s %q: %w", FieldUpstream, spec, err)
	}
	addrs := []string{host}
	if _, err := netip.ParseAddr(host); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err = net.DefaultResolver.LookupHost(ctx, host)
		cancel()
		if err != nil || len(addrs) == 0 {
			return proxy.Upstream{}, errorf("%s %q: cannot resolve %q: %v", FieldUpstream, spec, host, err)
		}
	}
	if !allowRemote {
		for _, a := range addrs {
			if _, loopback := netaddr.LoopbackIP(a); !loopback {
				return proxy.Upstream{}, errorf("%s %q: %s is not a loopback address; postgres should listen on loopback or a unix socket only (pass %s to relay to another host, in plaintext)", FieldUpstream, spec, a, FieldAllowRemoteUpstream)
			}
		}
	}
	// The check above saw what the name resolves to now; LoopbackOnly has
	// every dial check the address it actually connects to.
	return proxy.Upstream{Network: "tcp", Address: net.JoinHostPort(host, port), LoopbackOnly: !allowRemote}, nil
}

func parseUnixUpstream(spec, path string) (proxy.Upstream, error) {
	if strings.HasPrefix(filepath.Base(path), ".s.PGSQL.") {
		return proxy.Upstream{Network: "unix", Address: path}, nil
	}
	if i := strings.LastIndex(path, ":"); i >= 0 {
		port := path[i+1:]
		if _, err := netaddr.Port(port, 1); err != nil {
			return proxy.Upstream{}, errorf("%s %q: %w", FieldUpstream, spec, err)
		}
		return proxy.Upstream{Network: "unix", Address: filepath.Join(path[:i], ".s.PGSQL."+port)}, nil
	}
	fi, err := os.Stat(path)
	if err == nil && !fi.IsDir() {
		// A socket file not named like postgres's: take it as it is.
		return proxy.Upstream{Network: "unix", Address: path}, nil
	}
	// A bare directory: if postgres's socket is already there and it is the
	// only one, use it whatever its port; several are ambiguous; none means
	// postgres is not up yet, and 5432 is libpq's default too.
	sockets, _ := filepath.Glob(filepath.Join(path, ".s.PGSQL.*[0-9]"))
	switch len(sockets) {
	case 0:
		return proxy.Upstream{Network: "unix", Address: filepath.Join(path, ".s.PGSQL.5432")}, nil
	case 1:
		return proxy.Upstream{Network: "unix", Address: sockets[0]}, nil
	default:
		return proxy.Upstream{}, errorf("%s %q: the directory holds several postgres sockets (%s); name one with %s:PORT",
			FieldUpstream, spec, strings.Join(baseNames(sockets), ", "), path)
	}
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// ResolveListen is the addresses a listen setting binds (see
// resolveListen), for a configuration check.
func ResolveListen(spec string) ([]string, error) { return resolveListen(spec) }

// ParseUpstream is the upstream an upstream setting names (see
// parseUpstream), for a configuration check.
func ParseUpstream(spec string, allowRemote bool) (proxy.Upstream, error) {
	return parseUpstream(spec, allowRemote)
}
