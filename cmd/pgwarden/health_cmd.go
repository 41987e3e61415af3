package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/internal/admin"
)

// defaultHealthURL is /readyz of the admin endpoint at its default address,
// where the sample config (contrib/pgwarden.yaml) puts it.
const defaultHealthURL = "http://" + admin.DefaultAddr + "/readyz"

// maxHealthBody bounds what is read of the answer: one line of reason.
const maxHealthBody = 1 << 10

// runHealth is `pgwarden health`: one GET of a readiness URL, for a
// container's HEALTHCHECK (the distroless image has no shell, no curl).
// Exit 0 when the gateway answers 200 (ready), 1 otherwise, 2 for usage.
func runHealth(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("health", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	rawURL := fs.String("url", defaultHealthURL, "readiness URL: /readyz (or /healthz) of --admin or --metrics-listen")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: pgwarden health [--url URL] [--timeout DUR]\n\nExit 0 when URL answers 200 (the gateway is ready), 1 otherwise.\n\nFlags:\n%s", fs.FlagUsages())
			return exitOK
		}
		fmt.Fprintf(stderr, "pgwarden health: %v\n", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgwarden health: unexpected argument %q: health takes only flags (--url URL)\n", fs.Arg(0))
		return exitUsage
	}
	u, err := url.Parse(*rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "pgwarden health: --url %q: want http://HOST:PORT/readyz (e.g. %s)\n", *rawURL, defaultHealthURL)
		return exitUsage
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "pgwarden health: --timeout %s: want a positive duration, e.g. 5s\n", *timeout)
		return exitUsage
	}
	client := &http.Client{
		Timeout: *timeout,
		// No proxy: a health check asks this host's gateway, wherever
		// HTTP_PROXY points.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		// A redirect is not the gateway's answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Get(u.String())
	if err != nil {
		fmt.Fprintf(stderr, "pgwarden health: %s: %v (is pgwarden running with --admin or --metrics-listen at that address?)\n", u, err)
		return exitRuntime
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxHealthBody))
	text := oneLine(strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "pgwarden health: %s: %s: %s\n", u, resp.Status, text)
		return exitRuntime
	}
	fmt.Fprintln(stdout, text)
	return exitOK
}
