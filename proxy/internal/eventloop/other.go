//go:build !linux

package eventloop

import (
	"context"
	"errors"
	"net"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// Event loops need epoll: elsewhere there are none, and sessions are
// relayed by relay.Pipe.

// Supported reports whether event loops exist on this system.
const Supported = false

// ErrUnsupported is New's error off Linux.
var ErrUnsupported = errors.New("the event-loop relay needs Linux (epoll)")

// Relay is not available here.
type Relay struct{}

// New returns ErrUnsupported.
func New(*zap.Logger) (*Relay, error) { return nil, ErrUnsupported }

func (*Relay) Wrap(raw net.Conn) net.Conn { return raw }
func (*Relay) Run(s *relay.Session) error { return relay.Pipe(s) }
func (*Relay) Stop()                      {}

func (*Relay) Alive(context.Context) error { return nil }

// There are no loops, so no sessions or queues, here.

const QueueMax = 0

func Sessions() int    { return 0 }
func QueuePeak() int64 { return 0 }
func ResetQueuePeak()  {}
