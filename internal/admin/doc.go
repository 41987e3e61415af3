// Package admin is the gateway's admin HTTP endpoint (--admin) and the Go
// client that `pgwarden bans` uses.
//
// It is plain HTTP without authentication, so it only ever listens on
// loopback, and answers only requests whose Host is loopback: whoever can
// reach it can ban and unban.
//
//	GET    /bans        200 [{"ip": "...", "until": "RFC3339", "failures": N, "bans": N}]
//	POST   /bans        201 {"ip": ..., "until": ...}; body {"ip": "IP or CIDR", "for": "1h"} ("for" optional)
//	DELETE /bans/{ip}   204; 404 if not banned (ip may be a URL-escaped CIDR)
//	GET    /grants      200 [{"id": "g-…", "source": "…/32", "until": "RFC3339", "reason": …, "users": […], "databases": […], "created_by": …, …}]
//	POST   /grants      201 the grant; body {"source": "IP or CIDR", "ttl": "30m", "reason": "…", "users": […], "databases": […], "route": "…"}
//	DELETE /grants/{id} 204; the id, or a source (every grant of it); ?keep_sessions=true leaves their sessions running
//	GET    /rules       200 [{"route": "...", "entry": "10.0.0.0/8", "hits": N, "last_hit": "RFC3339" or null, "since": "RFC3339"}]
//	GET    /healthz     200 "ok": the process is up
//	GET    /readyz      200 "ready", or 503 with the reason (not listening, upstream down, draining)
//	GET    /metrics     Prometheus text format
//
// Errors are {"error": "..."} with 400 (bad address, duration or grant),
// 403 (non-loopback Host), 404, 415 (POST without a JSON content type), 503
// (jail or grants closed, too many grants) or 500.
//
// NewMetrics builds the other endpoint (--metrics-listen): /healthz,
// /readyz and /metrics alone, on any address, for Prometheus and probes
// from other hosts. It serves nothing that changes state, so it needs
// neither the loopback bind nor the Host check; its /readyz runs the
// upstream check at most once a second, however often it is asked.
//
// Each resource is one file: its handlers, registered by a method of
// Server (bans.go, health.go); resources served by other packages come in
// as Config.Handlers.
package admin
