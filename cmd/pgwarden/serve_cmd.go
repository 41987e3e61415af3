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
	"github.com/pgwarden/pgwarden/internal/systemd"
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
	// Under systemd: READY, RELOADING, STOPPING, STATUS and the watchdog
	// (Type=notify), and sockets it passes in (--listen systemd:NAME).
	notify := systemd.NewNotifier(log)
	sockets := &systemd.Sockets{}
	watchCtx, stopWatchdog := context.WithCancel(context.Background())
	defer stopWatchdog()
	var gw *gateway.Gateway
	gw, err = gateway.New(&cfg.Config, gateway.Options{
		Logger:    log,
		Version:   buildVersion(),
		Names:     flagNames,
		Inherited: sockets.Take,
		Hooks: gateway.Hooks{
			Ready: func() {
				notify.Ready()
				go notify.RunWatchdog(watchCtx, gw.Alive)
			},
			Reloading: notify.Reloading,
			Reloaded:  notify.Ready,
			Stopping:  notify.Stopping,
		},
		// SIGHUP re-reads the command line and its file.
		Reread: func() (*gateway.Config, error) {
			c, err := parseServeArgs(args)
			if err != nil {
				return nil, err
			}
			if c.LogFormat != cfg.LogFormat || c.LogLevel != cfg.LogLevel {
				log.Warn("--log-format and --log-level take effect only after a restart")
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
	notify.Status = gw.Status
	if unused := sockets.Unused(); len(unused) > 0 {
		log.Warn("systemd passed sockets that no --listen systemd:NAME takes; they stay unused", zap.Strings("sockets", unused))
	}
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
