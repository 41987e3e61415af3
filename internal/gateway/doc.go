// Package gateway is a running `pgwarden serve`: its routes (listeners in
// front of proxy servers, each route with its allowlist, certificates and
// upstream), the state they share (ban jail, cancel keys and limits, the
// upstream startup cap), the admin endpoint, and the lifecycle: New checks
// the whole configuration and binds every listener, Run serves until its
// context ends and then drains, Reload re-reads the configuration and
// puts everything that can change without a new socket in force at once,
// or nothing of it when any part is broken (reload.go), Ready answers
// readiness probes, Alive asks every accept loop and event loop to answer
// (a supervisor's watchdog). Each route counts what each admission rule
// let in (package rulehits), kept in the state file. Access grants (grants.go) admit sources outside a route's
// allowlist for a while: made through the admin endpoint or, with
// GrantListen, by CI jobs presenting an OIDC token.
//
// Config holds the operator's settings as written (flags and YAML keys map
// onto it one to one); every problem with them is a field error
// (fielderr) naming the field, which the command line renders with its
// flag names. Hooks let a supervisor follow the lifecycle (systemd's
// READY, RELOADING and STOPPING), Options.Listen and Options.Inherited
// let it hand over listening sockets ("systemd:NAME" listen addresses),
// Status sums up sessions and bans, and Build, ResolveListen and
// ParseUpstream serve a configuration check (package check).
//
// With other gateways (several.go): a route's trusted load balancers have
// their PROXY headers read and their clients admitted in the connection's
// goroutine (balancer.go); the jail shares its failures, bans and history
// on Redis and applies the other gateways' (fleet.go), and so do the
// grants (fleet_grants.go); CrowdSec's decisions join the admission policy
// as a deny source.
package gateway
