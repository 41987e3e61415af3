// Package acl decides, from the peer's IP address alone, whether a TCP
// connection may reach the gateway at all, and keeps the ban jail that feeds
// that decision.
//
// Two words are used throughout:
//
//   - allowed: the peer address lies inside one of the operator's --allow
//     prefixes (an IP, a CIDR, or a go-sockaddr template rendered at start).
//   - banned: the peer address, or the IPv6 prefix it belongs to, has failed
//     authentication too often and sits in the Jail until its ban lifts.
//
// A connection that is not allowed, or is banned, is closed inside
// Listener.Accept before a single byte is read or written: no Postgres
// ErrorResponse, no TLS alert, just a TCP RST (SO_LINGER 0). Nothing the
// client sends can influence the decision, because the decision happens
// before the client has been given the chance to send anything; this also
// means a startup parameter can never choose the key a ban is stored under.
// The one exception is a peer the operator listed as a trusted load
// balancer: Listener.Accept leaves its connections undecided (Defer), and
// the same Gate judges the client its PROXY-protocol header names
// (Gate.AdmitSource); a header from any other peer is never read.
//
// Addresses are normalised before every decision: an IPv4-mapped IPv6 peer
// (::ffff:10.1.2.3, as a dual-stack listener reports IPv4 clients) is
// matched and banned as the IPv4 address 10.1.2.3, and IPv6 zones are
// dropped. Note that ::/0 does not contain IPv4 addresses in this model: an
// allowlist meant to admit everybody needs both 0.0.0.0/0 and ::/0.
//
// What counts as an authentication failure is the caller's business (see
// CountsAsFailure); the Jail only counts what it is told, keyed by the
// normalised peer address (and, for IPv6, also by its /64). Its semantics
// follow fail2ban: MaxRetry failures within FindTime ban for BanTime,
// repeat offenders get BanTime × TimeFactor^(n-1) capped at MaxTime, plus a
// few percent of random jitter; bans and ban history persist in a bbolt file
// so a restart neither frees attackers nor forgets repeat offenders.
// The jail also admits authentications (Jail.BeginAuth): a source may have
// at most as many in progress as it has retries left before a ban, so
// guesses sent in parallel cannot outrun the ban, and a ban revokes the
// source's authentications still in progress. Sessions that already
// authenticated are not the jail's concern.
package acl
