package main

import (
	"fmt"
	"os"

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
	core := fielderr.Core(zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl), names)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(os.Stderr))), nil
}
