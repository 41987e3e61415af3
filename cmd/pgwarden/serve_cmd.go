package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/internal/gateway"
)

// runServe is `pgwarden serve`.
func runServe(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseServeArgs(args)
	if err != nil {
		if errors.Is(err, errHelp) {
			fmt.Fprintf(stdout, "Usage: pgwarden serve [--config FILE] [flags]\n\nFlags given here override the config file, whose keys are the flag names.\n\nFlags:\n%s",
				newServeFlags(&serveConfig{}).FlagUsages())
			return exitOK
		}
		printConfigError(stderr, err)
		return exitCode(err)
	}
	if err := cfg.validate(); err != nil {
		printConfigError(stderr, err)
		return exitUsage
	}
	// Until the gateway has started, log lines are held: a refused start
	// prints its errors alone.
	held := newHeldWriter(zapcore.Lock(os.Stderr))
	log, err := newLoggerTo(held, cfg.LogFormat, cfg.LogLevel, flagNames)
	if err != nil {
		printConfigError(stderr, err)
		return exitUsage
	}
	defer func() { _ = log.Sync() }()
	gw, err := gateway.New(&cfg.Config, gateway.Options{
		Logger:  log,
		Version: buildVersion(),
		Names:   flagNames,
		// SIGHUP re-reads the command line and its file for the allowlists.
		Reread: func() (*gateway.Config, error) {
			c, err := parseServeArgs(args)
			if err != nil {
				return nil, err
			}
			return &c.Config, nil
		},
	})
	if err != nil {
		held.Discard()
		printConfigError(stderr, err)
		return exitCode(err)
	}
	held.Release()
	startDebugServer(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				gw.Reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := gw.Run(ctx); err != nil {
		log.Error("gateway stopped", zap.Error(err))
		return exitRuntime
	}
	return exitOK
}

// printConfigError prints one line per problem, each naming its flag.
func printConfigError(w io.Writer, err error) {
	for _, line := range strings.Split(flagText(err), "\n") {
		fmt.Fprintf(w, "pgwarden: %s\n", line)
	}
}
