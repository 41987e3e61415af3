package forward

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/netaddr"
)

// DefaultListen is where `pgwarden connect` listens by default:
// libpq's default port on IPv4 loopback, so `psql host=localhost` finds it.
const DefaultListen = "127.0.0.1:5432"

// maxSocketPath is the usable length of sun_path on Linux (108 with NUL).
const maxSocketPath = 107

var errorf = fielderr.Errorf

// The configuration fields this file's errors name (fielderr.Render).
var (
	// FieldListen is an address given to ParseListen or Listen.
	FieldListen = fielderr.Field{Pkg: "forward", Name: "listen address"}
	// FieldAllowRemote is ParseListen's allowRemote.
	FieldAllowRemote = fielderr.Field{Pkg: "forward", Name: "allow remote listen"}
)

// ListenAddr is a parsed listen address (FieldListen).
type ListenAddr struct {
	Network string // "tcp" or "unix"
	Address string // "127.0.0.1:5432" or "/dir/.s.PGSQL.5432"
}

// String is "network:address".
func (a ListenAddr) String() string { return a.Network + ":" + a.Address }

// ParseListen parses a listen address: IP:PORT (an IP literal or
// "localhost", which means 127.0.0.1), or a unix socket directory DIR[:PORT]
// (DIR starting with '/' or '.'), which becomes DIR/.s.PGSQL.PORT as libpq
// names sockets, PORT defaulting to 5432. A non-loopback address is
// refused unless allowRemote: a forwarder open to the network would relay
// anyone who can reach it into the database, with this host's client
// certificate.
func ParseListen(spec string, allowRemote bool) (ListenAddr, error) {
	if strings.HasPrefix(spec, "/") || strings.HasPrefix(spec, ".") {
		dir, port := spec, "5432"
		if i := strings.LastIndexByte(spec, ':'); i >= 0 {
			if _, err := netaddr.Port(spec[i+1:], 0); err == nil {
				dir, port = spec[:i], spec[i+1:]
			}
		}
		path := filepath.Join(dir, ".s.PGSQL."+port)
		if len(path) > maxSocketPath {
			return ListenAddr{}, errorf("%s %s: socket path %s is longer than %d bytes: use a shorter directory", FieldListen, spec, path, maxSocketPath)
		}
		return ListenAddr{Network: "unix", Address: path}, nil
	}
	host, port, err := net.SplitHostPort(spec)
	if err != nil {
		return ListenAddr{}, errorf("%s %s: want 127.0.0.1:PORT, [::1]:PORT, or a socket directory DIR[:PORT]", FieldListen, spec)
	}
	if _, err := netaddr.Port(port, 0); err != nil {
		return ListenAddr{}, errorf("%s %s: %w", FieldListen, spec, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if host == "" {
		return ListenAddr{}, errorf("%s %s: no address means every interface; give 127.0.0.1:%s (or an address with %s)", FieldListen, spec, port, FieldAllowRemote)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return ListenAddr{}, errorf("%s %s: %q is not an IP address (names other than localhost are not resolved; a unix socket directory must start with / or ./)", FieldListen, spec, host)
	}
	ip = ip.Unmap()
	if !ip.IsLoopback() && !allowRemote {
		return ListenAddr{}, errorf("%s %s: not a loopback address; a forwarder reachable from the network lets anyone who reaches it into the database with this host's TLS identity: listen on 127.0.0.1 or a unix socket, or add %s if that is really intended", FieldListen, spec, FieldAllowRemote)
	}
	return ListenAddr{Network: "tcp", Address: net.JoinHostPort(ip.String(), port)}, nil
}

// Listen opens a parsed address. A unix socket left behind by a process
// that died is replaced; one that still answers is an error, as is any
// other file in its place. The socket is made mode 0600: only this user
// (and root) may connect, since whoever connects uses this host's client
// certificate.
func Listen(a ListenAddr) (net.Listener, error) {
	if a.Network != "unix" {
		ln, err := net.Listen(a.Network, a.Address)
		if errors.Is(err, syscall.EADDRINUSE) {
			// The default, 127.0.0.1:5432, is where a local postgres
			// listens too.
			return nil, errorf("%s %s: %w (a local postgres or another forwarder may hold that port; give another with %s 127.0.0.1:PORT and point the client at it)",
				FieldListen, a.Address, err, FieldListen)
		}
		if err != nil {
			return nil, errorf("%s %s: %w", FieldListen, a.Address, err)
		}
		return ln, nil
	}
	if err := removeStaleSocket(a.Address); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", a.Address)
	if err != nil {
		return nil, errorf("%s %s: %w", FieldListen, a.Address, err)
	}
	if err := os.Chmod(a.Address, 0o600); err != nil {
		_ = ln.Close()
		return nil, errorf("%s %s: restricting the socket to its owner: %w", FieldListen, a.Address, err)
	}
	return ln, nil
}

// removeStaleSocket removes path if it is a socket nobody listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return errorf("%s %s: %w", FieldListen, path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return errorf("%s %s: exists and is not a socket; refusing to replace it", FieldListen, path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return errorf("%s %s: another process is listening on this socket", FieldListen, path)
	}
	if err := os.Remove(path); err != nil {
		return errorf("%s %s: removing a stale socket: %w", FieldListen, path, err)
	}
	return nil
}
