// Package crowdsec is a bouncer for CrowdSec's Local API (LAPI): it pulls
// the decision stream and answers, at accept time, whether a source is
// banned by a CrowdSec decision. It speaks the documented LAPI on net/http
// (the official Go bouncer module is not available to this project):
//
//	GET /v1/decisions/stream?startup=true&dedup=false   all active decisions
//	                                        (first pull, and after any failed pull)
//	GET /v1/decisions/stream?startup=false&dedup=false  what changed since the
//	                                        last pull
//	X-Api-Key: <the bouncer key>            (cscli bouncers add NAME)
//	→ {"new": [decision...], "deleted": [decision...]}  (either may be null)
//	decision = {"id": 1, "origin": "crowdsec", "type": "ban", "scope": "Ip",
//	            "value": "192.0.2.1", "duration": "3h59m58.123s",
//	            "scenario": "crowdsecurity/ssh-bf"}
//
// Rules:
//   - Only type "ban" with scope "Ip" or "Range" (case-insensitively) is
//     enforced; other types (captcha, throttle) and scopes (Country, AS,
//     Username) are ignored.
//   - State is keyed by decision id: one address can carry several
//     decisions with different ends, and a deleted decision lifts only
//     that one (crowdsec #1244). dedup=false makes the LAPI send every
//     decision and every deletion; by default it deduplicates per address
//     and never announces some deletions (see fetch).
//   - A decision ends at the time it was received plus its duration (Go
//     duration syntax; the LAPI computes it from its own clock, so the two
//     clocks need not agree).
//   - The LAPI advances a bouncer's last-pull time when it answers, even if
//     the answer never arrives; so after any failed pull the next one asks
//     for the full state again (startup=true) and replaces what is held.
//   - While the LAPI is down, or rejects the key, the last known decisions
//     stay in force (until they expire); Up reports the outage for the
//     pgwarden_crowdsec_up gauge, and it is logged once per outage.
//   - Everything is bounded: each request has a timeout, a response is read
//     up to MaxResponseBytes and decoded one decision at a time, and at
//     most MaxDecisions are held; the excess is dropped, counted, and
//     logged (never evicting decisions already held).
//
// Banned is lock-free: it reads an immutable index swapped in after each
// pull, probing one map per distinct prefix length in use, like the jail.
package crowdsec
