package main

import (
	"bytes"
	"fmt"
	"os"
	"sync"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// newLogger builds the process logger: JSON by default, console for people.
// zap's own sampling is off: it would drop session lines and bans as
// readily as noise. The flood-prone lines are sampled where they are
// produced, per source: accept-time rejections in acl.Listener, connections
// refused before they became a session in proxy (logsample.go).
//
// names render the errors libraries log about their configuration fields
// (fielderr.Core).
func newLogger(format, level string, names fielderr.Names) (*zap.Logger, error) {
	return newLoggerTo(zapcore.Lock(os.Stderr), format, level, names)
}

// newLoggerTo is newLogger writing to out.
func newLoggerTo(out zapcore.WriteSyncer, format, level string, names fielderr.Names) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("--log-format %q: use json or console", format)
	}
	core := fielderr.Core(zapcore.NewCore(enc, out, lvl), names)
	return zap.New(core, zap.ErrorOutput(out)), nil
}

// heldWriter holds what is logged while the gateway starts: a start that
// is refused prints its configuration errors and nothing else, while the
// lines of a start that succeeds (certificates loaded, listening) are
// written once it has. Release writes them and lets later lines through;
// Discard drops them.
type heldWriter struct {
	mu   sync.Mutex
	out  zapcore.WriteSyncer
	held *bytes.Buffer // nil once released or discarded
	pass bool          // released: write through
}

func newHeldWriter(out zapcore.WriteSyncer) *heldWriter {
	return &heldWriter{out: out, held: &bytes.Buffer{}}
}

func (h *heldWriter) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.pass:
		return h.out.Write(p)
	case h.held != nil:
		return h.held.Write(p)
	}
	return len(p), nil // discarded
}

func (h *heldWriter) Sync() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pass {
		return h.out.Sync()
	}
	return nil
}

// Release writes what was held and everything after.
func (h *heldWriter) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held != nil {
		_, _ = h.out.Write(h.held.Bytes())
	}
	h.held, h.pass = nil, true
}

// Discard drops what was held; later lines are dropped too (the process
// is about to exit with its errors).
func (h *heldWriter) Discard() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held, h.pass = nil, false
}
