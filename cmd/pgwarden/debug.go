package main

import (
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/netaddr"
)

// startDebugServer serves Go's pprof handlers when PGWARDEN_DEBUG_PPROF
// names a loopback HOST:PORT. It is an operator's diagnostic (CPU and heap
// profiles under load), off by default and never on a public address.
func startDebugServer(log *zap.Logger) {
	addr := os.Getenv("PGWARDEN_DEBUG_PPROF")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if _, loopback := netaddr.LoopbackIP(host); err != nil || !loopback {
		log.Error("PGWARDEN_DEBUG_PPROF must be a loopback IP:PORT; pprof not started", zap.String("addr", addr))
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		log.Warn("pprof debug server listening", zap.String("addr", addr))
		if err := srv.ListenAndServe(); err != nil {
			log.Error("pprof debug server stopped", zap.Error(err))
		}
	}()
}
