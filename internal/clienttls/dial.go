package clienttls

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// ClassifyDialError attributes a failed dial of address to resolve or tcp.
func ClassifyDialError(err error, address string, timeout time.Duration) error {
	var de *net.DNSError
	if errors.As(err, &de) {
		if de.IsNotFound {
			return layerErr(LayerResolve, nil, "could not resolve %q: no such host", de.Name)
		}
		if de.IsTimeout {
			return layerErr(LayerResolve, nil, "could not resolve %q: the DNS server did not answer in time", de.Name)
		}
		return layerErr(LayerResolve, de, "could not resolve %q", de.Name)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return layerErr(LayerTCP, nil, "connection to %s refused (nothing listens there, or a firewall rejects it)", address)
	case netconn.IsTimeout(err) || errors.Is(err, context.DeadlineExceeded):
		return layerErr(LayerTCP, nil, "no answer from %s within %s (a firewall dropping packets, or a wrong address)", address, timeout)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return layerErr(LayerTCP, err, "%s is unreachable from here (routing)", address)
	case netconn.IsReset(err):
		return layerErr(LayerTCP, err, "%s", ResetAtAccept)
	}
	return layerErr(LayerTCP, err, "connecting to %s", address)
}
