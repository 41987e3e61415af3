package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// Sockets are the listening sockets systemd passed to this process. They
// are read once, at the first Take; each can be taken once.
type Sockets struct {
	once  sync.Once
	err   error
	named []namedListener
	taken map[int]bool
	mu    sync.Mutex
}

type namedListener struct {
	name string
	ln   net.Listener
}

// Take returns the inherited sockets named name (LISTEN_FDNAMES, set by
// the socket unit's FileDescriptorName=, which defaults to the unit's
// name), or every one not taken yet when name is "". It is an error when
// none matches, when systemd passed nothing (or passed it to another
// process: LISTEN_PID is not ours), or when a socket was already taken.
func (s *Sockets) Take(name string) ([]net.Listener, error) {
	s.once.Do(s.load)
	if s.err != nil {
		return nil, s.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Listener
	var names []string
	for i, nl := range s.named {
		names = append(names, nl.name)
		if name != "" && nl.name != name {
			continue
		}
		if s.taken[i] {
			if name != "" {
				return nil, fmt.Errorf("the socket named %q is already used by another listen address", name)
			}
			continue
		}
		s.taken[i] = true
		out = append(out, nl.ln)
	}
	if len(out) == 0 {
		if name == "" {
			return nil, errors.New("every socket systemd passed in is already used by another listen address")
		}
		return nil, fmt.Errorf("systemd passed no socket named %q (it passed %s): set FileDescriptorName=%s in the socket unit, or use systemd: alone for all",
			name, strings.Join(dedupe(names), ", "), name)
	}
	return out, nil
}

// Unused lists the sockets passed to this process that nobody took, for a
// warning; it reads them if nobody asked yet.
func (s *Sockets) Unused() []string {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		s.once.Do(s.load)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i, nl := range s.named {
		if !s.taken[i] {
			out = append(out, nl.name+" "+nl.ln.Addr().String())
		}
	}
	return out
}

// load reads LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (sd_listen_fds(3))
// and unsets them, so nothing started later takes them for its own.
func (s *Sockets) load() {
	s.taken = map[int]bool{}
	pid := os.Getenv("LISTEN_PID")
	files := activation.Files(true)
	if len(files) == 0 {
		switch {
		case pid == "":
			s.err = errors.New("systemd passed no sockets (LISTEN_PID and LISTEN_FDS are unset): run under a .socket unit, or listen on HOST:PORT")
		case pid != strconv.Itoa(os.Getpid()):
			s.err = fmt.Errorf("the sockets in LISTEN_FDS are for process %s, not this one (%d): not taking them", pid, os.Getpid())
		default:
			s.err = errors.New("systemd passed no sockets (LISTEN_FDS is 0 or unset)")
		}
		return
	}
	var errs []error
	for _, f := range files {
		fd := f.Fd()
		ln, err := net.FileListener(f)
		_ = f.Close() // FileListener holds a duplicate
		if err != nil {
			errs = append(errs, fmt.Errorf("inherited socket %s (fd %d) is not a listening stream socket: %w", f.Name(), fd, err))
			continue
		}
		s.named = append(s.named, namedListener{name: f.Name(), ln: ln})
	}
	s.err = errors.Join(errs...)
}

func dedupe(names []string) []string {
	sort.Strings(names)
	out := names[:0]
	for i, n := range names {
		if i == 0 || n != names[i-1] {
			out = append(out, n)
		}
	}
	return out
}
