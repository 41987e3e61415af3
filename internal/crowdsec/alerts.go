package crowdsec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Pushing pgwarden's own bans to the LAPI, as a CrowdSec machine (a
// watcher) does, so every bouncer of that LAPI blocks the source too:
//
//	POST /v1/watchers/login {"machine_id": LOGIN, "password": PW, "scenarios": [...]}
//	  → 200 {"code": 200, "expire": RFC 3339, "token": JWT}    (401: wrong credentials)
//	POST /v1/alerts  Authorization: Bearer JWT   [alert...]
//	  → 201 ["<alert id>", ...]                                (401: token expired or revoked)
//	DELETE /v1/decisions?value=V&scopes=Ip&type=ban&origin=crowdsec  Authorization: Bearer JWT
//	  → 200 {"nbDeleted": "1"}
//
// An alert carries its own decision (a ban for the ban's remaining time),
// which the LAPI stores as given instead of applying its profiles. The
// shapes were checked against Debian's CrowdSec 1.4.6 (see alerts_test.go
// for the exact alert it accepted). Decisions use origin "crowdsec", as the
// agent's do: `cscli decisions list` hides other origins by default.

// Scenario names, the ones contrib/crowdsec/scenarios gives an agent that
// reads pgwarden's log, so a ban looks the same whichever way it arrives.
const (
	ScenarioBan      = "pgwarden/pgwarden-ban"
	ScenarioBanRange = "pgwarden/pgwarden-ban-range"
)

// Defaults for the zero values of PusherConfig.
const (
	DefaultMaxQueue        = 1024
	DefaultMaxBatch        = 50
	DefaultMinBackoff      = time.Second
	DefaultMaxBackoff      = time.Minute
	DefaultFlushTimeout    = 3 * time.Second
	DefaultPusherUserAgent = "pgwarden-watcher/1"
	// maxAnswer bounds a login, alerts or delete answer read: they are a
	// token, a list of ids, a count.
	maxAnswer = 64 << 10
	// relogBefore: a token this close to its expiry is renewed first.
	relogBefore = time.Minute
)

// ErrLoginRejected is wrapped when the LAPI refuses the machine's login or
// password.
var ErrLoginRejected = errors.New("crowdsec LAPI rejected the machine login")

// PusherConfig configures NewPusher.
type PusherConfig struct {
	// Credentials log the machine in; URL is the LAPI's base URL.
	Credentials MachineCredentials
	// CredentialsFile, if set, is read again when the LAPI rejects the
	// password, so new credentials are picked up without a restart.
	CredentialsFile string
	// Timeout bounds one request, answer included; default 10s.
	Timeout time.Duration
	// MaxQueue caps the bans and unbans waiting to be sent (the batch
	// being sent is apart); when full, the oldest is dropped. Default 1024.
	MaxQueue int
	// MaxBatch caps the alerts sent in one request; default 50.
	MaxBatch int
	// MinBackoff and MaxBackoff bound the wait between attempts while the
	// LAPI is down (doubling from the first to the second); defaults 1s
	// and 1m.
	MinBackoff, MaxBackoff time.Duration
	// HTTPClient sends the requests; default a client on a clone of
	// http.DefaultTransport.
	HTTPClient *http.Client
	// FlushTimeout bounds the one last attempt, when Run's context ends,
	// to send what is still queued (bans made while the gateway drained);
	// default 3s.
	FlushTimeout time.Duration
	// UserAgent is sent with every request; default "pgwarden-watcher/1".
	UserAgent string
	// Logger receives outages and rejected alerts; default none.
	Logger *zap.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *PusherConfig) checkAndSetDefaults() error {
	var errs configProblems
	bad := errs.add
	if err := checkURL(c.Credentials.URL); err != nil {
		bad("MachineCredentials url: %w", err)
	}
	if c.Credentials.Login == "" || c.Credentials.Password == "" {
		bad("MachineCredentials: login and password are required")
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	} else if c.Timeout < 0 {
		bad("Timeout must be positive (got %s)", c.Timeout)
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = DefaultMaxQueue
	} else if c.MaxQueue < 0 {
		bad("MaxQueue must be positive (got %d)", c.MaxQueue)
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	} else if c.MaxBatch < 0 {
		bad("MaxBatch must be positive (got %d)", c.MaxBatch)
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if c.FlushTimeout <= 0 {
		c.FlushTimeout = DefaultFlushTimeout
	}
	clientDefaults(&c.HTTPClient, &c.UserAgent, DefaultPusherUserAgent, &c.Logger, &c.Now)
	return errs.err()
}

// pushItem is a ban to announce or an unban to apply, in the order they
// happened (an unban must not overtake the ban it lifts).
type pushItem struct {
	key      netip.Prefix
	unban    bool
	until    time.Time // ban only
	at       time.Time
	failures int
	manual   bool
}

// Pusher sends the jail's bans to the LAPI as alerts. Ban and Unban never
// block: they queue, and Run sends. Safe for concurrent use.
type Pusher struct {
	cfg PusherConfig
	log *zap.Logger

	mu     sync.Mutex // guards queue and creds
	queue  []pushItem
	creds  MachineCredentials
	wake   chan struct{}
	pushed atomic.Uint64
	failed atomic.Uint64
	drops  atomic.Uint64

	// Run's own state.
	token   string
	expires time.Time
	outage  bool
	reread  bool // the LAPI rejected the password: read the file again
}

// NewPusher validates cfg; nothing is contacted until Run.
func NewPusher(cfg PusherConfig) (*Pusher, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Pusher{cfg: cfg, log: cfg.Logger, creds: cfg.Credentials, wake: make(chan struct{}, 1)}, nil
}

// Pushed counts the alerts the LAPI accepted.
func (p *Pusher) Pushed() uint64 { return p.pushed.Load() }

// Failed counts the alerts the LAPI refused (not retried).
func (p *Pusher) Failed() uint64 { return p.failed.Load() }

// Dropped counts the alerts never sent: dropped from a full queue, or
// whose ban ended before the LAPI could be reached.
func (p *Pusher) Dropped() uint64 { return p.drops.Load() }

// Ban queues an alert for a ban of key until until (at is when it was
// made; failures the failed logins behind it, 0 for a manual one).
func (p *Pusher) Ban(key netip.Prefix, at, until time.Time, failures int, manual bool) {
	p.enqueue(pushItem{key: key.Masked(), at: at, until: until, failures: failures, manual: manual})
}

// Unban queues the deletion of the LAPI's ban decisions on exactly key.
func (p *Pusher) Unban(key netip.Prefix) {
	p.enqueue(pushItem{key: key.Masked(), unban: true})
}

func (p *Pusher) enqueue(it pushItem) {
	if !it.key.IsValid() {
		return
	}
	p.mu.Lock()
	if len(p.queue) >= p.cfg.MaxQueue {
		// Drop the oldest: a newer ban is the likelier to still matter.
		if !p.queue[0].unban {
			p.drops.Add(1)
		}
		p.queue[0] = pushItem{}
		p.queue = p.queue[1:]
	}
	p.queue = append(p.queue, it)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Queued is the number of bans and unbans waiting.
func (p *Pusher) Queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// take removes the next request's worth from the queue: up to MaxBatch
// bans, or one unban.
func (p *Pusher) take() []pushItem {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		return nil
	}
	n := 1
	if !p.queue[0].unban {
		for n < len(p.queue) && n < p.cfg.MaxBatch && !p.queue[n].unban {
			n++
		}
	}
	batch := make([]pushItem, n)
	copy(batch, p.queue)
	clear(p.queue[:n])
	p.queue = p.queue[n:]
	if len(p.queue) == 0 {
		p.queue = nil // let the backing array go after a burst
	}
	return batch
}

// Run sends what is queued until ctx ends, retrying with backoff while the
// LAPI is down. When ctx ends it makes one last attempt, within
// FlushTimeout, to send what is left (flush), then returns nil.
func (p *Pusher) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	var batch []pushItem
	for {
		if len(batch) == 0 {
			if batch = p.take(); len(batch) == 0 {
				select {
				case <-ctx.Done():
					p.flush(nil)
					return nil
				case <-p.wake:
					continue
				}
			}
		}
		batch = p.prune(batch)
		if len(batch) == 0 {
			continue
		}
		err := p.send(ctx, batch)
		if ctx.Err() != nil {
			p.flush(batch) // cut short: send it again with the rest
			return nil
		}
		var perm *permanentError
		switch {
		case err == nil || errors.As(err, &perm):
			if err != nil {
				p.log.Error("crowdsec LAPI refused what pgwarden sent; not retried", zap.Error(err))
			}
			batch, backoff = nil, 0
			p.recovered()
			continue
		}
		p.down(err)
		if backoff == 0 {
			backoff = p.cfg.MinBackoff
		} else {
			backoff = min(2*backoff, p.cfg.MaxBackoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			p.flush(batch)
			return nil
		case <-t.C:
		}
	}
}

// flush makes one attempt, within FlushTimeout, to send batch and then
// everything queued, so the bans of a gateway's last minutes reach
// CrowdSec rather than ending with the process. It does not retry: what a
// LAPI that is down or too slow did not take is counted as dropped.
func (p *Pusher) flush(batch []pushItem) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.FlushTimeout)
	defer cancel()
	for {
		if len(batch) == 0 {
			if batch = p.take(); len(batch) == 0 {
				return
			}
		}
		if batch = p.prune(batch); len(batch) == 0 {
			continue
		}
		err := p.send(ctx, batch)
		var perm *permanentError
		if err != nil && !errors.As(err, &perm) {
			lost := len(batch)
			for rest := p.take(); len(rest) > 0; rest = p.take() {
				lost += len(rest)
			}
			p.drops.Add(uint64(lost))
			p.log.Warn("crowdsec: bans and unbans not pushed at shutdown", zap.Int("lost", lost), zap.Error(err))
			return
		}
		if err != nil {
			p.log.Error("crowdsec LAPI refused what pgwarden sent; not retried", zap.Error(err))
		}
		batch = nil
	}
}

// prune drops the bans that ended while waiting: a decision for no time
// is refused by the LAPI, and pointless.
func (p *Pusher) prune(batch []pushItem) []pushItem {
	now := p.cfg.Now()
	out := batch[:0]
	for _, it := range batch {
		if !it.unban && !it.until.After(now) {
			p.drops.Add(1)
			continue
		}
		out = append(out, it)
	}
	return out
}

// permanentError is an answer that retrying would not change (the LAPI
// refused the request's content).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// errUnauthorized is a 401/403 answer to a request with a token.
var errUnauthorized = errors.New("the LAPI refused the token")

// send sends one batch, logging in first if needed and once more if the
// token is refused.
func (p *Pusher) send(ctx context.Context, batch []pushItem) error {
	for attempt := 0; ; attempt++ {
		if p.token == "" || !p.cfg.Now().Before(p.expires.Add(-relogBefore)) {
			if err := p.login(ctx); err != nil {
				return err
			}
		}
		var err error
		if batch[0].unban {
			err = p.deleteDecisions(ctx, batch[0].key)
		} else {
			err = p.postAlerts(ctx, batch)
		}
		if errors.Is(err, errUnauthorized) && attempt == 0 {
			// Expired early, revoked, or the LAPI restarted with a new
			// signing secret: log in again and retry once.
			p.token = ""
			continue
		}
		return err
	}
}

// Login logs the machine in, checking the credentials (pgwarden check).
func (p *Pusher) Login(ctx context.Context) error { return p.login(ctx) }

func (p *Pusher) login(ctx context.Context) error {
	p.mu.Lock()
	if p.reread && p.cfg.CredentialsFile != "" {
		if mc, err := ReadMachineCredentials(p.cfg.CredentialsFile); err == nil && SameURL(mc.URL, p.creds.URL) {
			p.creds, p.reread = mc, false
		}
	}
	creds := p.creds
	p.mu.Unlock()
	body, err := json.Marshal(map[string]any{
		"machine_id": creds.Login,
		"password":   creds.Password,
		"scenarios":  []string{ScenarioBan, ScenarioBanRange},
	})
	if err != nil {
		return fmt.Errorf("encoding the crowdsec login: %w", err)
	}
	status, answer, err := p.do(ctx, http.MethodPost, "v1/watchers/login", nil, body, "")
	if err != nil {
		return fmt.Errorf("logging in to the crowdsec LAPI: %w", err)
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		p.mu.Lock()
		p.reread = true
		p.mu.Unlock()
		return fmt.Errorf("logging in to the crowdsec LAPI as %q: %w (HTTP %d; check the credentials file %s)",
			creds.Login, ErrLoginRejected, status, p.cfg.CredentialsFile)
	case status != http.StatusOK:
		return fmt.Errorf("logging in to the crowdsec LAPI: HTTP %d: %s", status, printable(answer[:min(len(answer), 200)]))
	}
	token, expires, err := parseLogin(answer, p.cfg.Now())
	if err != nil {
		return fmt.Errorf("logging in to the crowdsec LAPI: %w", err)
	}
	p.token, p.expires = token, expires
	return nil
}

// parseLogin reads a login answer: a token that can go into a header, and
// its expiry (an hour from now when absent or unreadable: the LAPI's
// default; a 401 renews it earlier anyway).
func parseLogin(b []byte, now time.Time) (string, time.Time, error) {
	var ans struct {
		Token  string `json:"token"`
		Expire string `json:"expire"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return "", time.Time{}, fmt.Errorf("the login answer is not JSON: %w", err)
	}
	if ans.Token == "" || len(ans.Token) > 8192 || !headerSafe(ans.Token) {
		return "", time.Time{}, errors.New("the login answer holds no usable token")
	}
	expires, err := time.Parse(time.RFC3339, ans.Expire)
	if err != nil || !expires.After(now) {
		expires = now.Add(time.Hour)
	}
	return ans.Token, expires, nil
}

// alert is the LAPI's alert model (models.Alert), the fields a watcher
// sends; every one listed is required by the LAPI's validation.
type alert struct {
	Scenario        string          `json:"scenario"`
	ScenarioHash    string          `json:"scenario_hash"`
	ScenarioVersion string          `json:"scenario_version"`
	Message         string          `json:"message"`
	EventsCount     int             `json:"events_count"`
	StartAt         string          `json:"start_at"`
	StopAt          string          `json:"stop_at"`
	Capacity        int             `json:"capacity"`
	Leakspeed       string          `json:"leakspeed"`
	Simulated       bool            `json:"simulated"`
	Remediation     bool            `json:"remediation"`
	Events          []struct{}      `json:"events"`
	Source          alertSource     `json:"source"`
	Decisions       []alertDecision `json:"decisions"`
}

type alertSource struct {
	Scope string `json:"scope"`
	Value string `json:"value"`
	IP    string `json:"ip,omitempty"`
	Range string `json:"range,omitempty"`
}

type alertDecision struct {
	Type     string `json:"type"`
	Duration string `json:"duration"`
	Scope    string `json:"scope"`
	Value    string `json:"value"`
	Origin   string `json:"origin"`
	Scenario string `json:"scenario"`
}

// scopeValue is how the LAPI names key: an address (scope Ip), or a
// prefix (scope Range), e.g. an IPv6 /64 banned as one.
func scopeValue(key netip.Prefix) (scope, value string) {
	if key.IsSingleIP() {
		return "Ip", key.Addr().String()
	}
	return "Range", key.String()
}

// makeAlert is the alert for one ban, with a ban decision for the time it
// has left at now.
func makeAlert(it pushItem, now time.Time) alert {
	scope, value := scopeValue(it.key)
	scenario, src := ScenarioBan, alertSource{Scope: scope, Value: value, IP: value}
	if scope == "Range" {
		scenario, src = ScenarioBanRange, alertSource{Scope: scope, Value: value, Range: value}
	}
	msg := fmt.Sprintf("pgwarden banned %s after %d failed logins", value, it.failures)
	if it.manual {
		msg = fmt.Sprintf("pgwarden banned %s (manual ban)", value)
	}
	at := it.at.UTC().Format(time.RFC3339)
	return alert{
		Scenario: scenario, Message: msg, EventsCount: max(it.failures, 1),
		StartAt: at, StopAt: at, Leakspeed: "0s", Remediation: true,
		Events: []struct{}{}, Source: src,
		Decisions: []alertDecision{{
			Type: "ban", Duration: it.until.Sub(now).Round(time.Second).String(),
			Scope: scope, Value: value, Origin: "crowdsec", Scenario: scenario,
		}},
	}
}

func (p *Pusher) postAlerts(ctx context.Context, batch []pushItem) error {
	now := p.cfg.Now()
	alerts := make([]alert, len(batch))
	for i, it := range batch {
		alerts[i] = makeAlert(it, now)
	}
	body, err := json.Marshal(alerts)
	if err != nil {
		return &permanentError{fmt.Errorf("encoding crowdsec alerts: %w", err)}
	}
	status, answer, err := p.do(ctx, http.MethodPost, "v1/alerts", nil, body, p.token)
	if err != nil {
		return fmt.Errorf("pushing %d alerts to the crowdsec LAPI: %w", len(batch), err)
	}
	if err := p.judge(status, answer, fmt.Sprintf("pushing %d alerts", len(batch))); err != nil {
		var perm *permanentError
		if errors.As(err, &perm) {
			p.failed.Add(uint64(len(batch)))
		}
		return err
	}
	p.pushed.Add(uint64(len(batch)))
	return nil
}

// deleteDecisions lifts the LAPI's ban decisions of origin crowdsec on
// exactly key: the ones pgwarden pushed, and any the agent made for the
// same value; not those of cscli, lists or the Central API, nor ranges
// around key.
func (p *Pusher) deleteDecisions(ctx context.Context, key netip.Prefix) error {
	scope, value := scopeValue(key)
	q := url.Values{"value": {value}, "scopes": {scope}, "type": {"ban"}, "origin": {"crowdsec"}}
	status, answer, err := p.do(ctx, http.MethodDelete, "v1/decisions", q, nil, p.token)
	if err != nil {
		return fmt.Errorf("deleting the crowdsec decisions on %s: %w", value, err)
	}
	return p.judge(status, answer, "deleting the crowdsec decisions on "+value)
}

// judge maps an answer to a request carrying the token.
func (p *Pusher) judge(status int, answer []byte, what string) error {
	switch {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return fmt.Errorf("%s: %w (HTTP %d)", what, errUnauthorized, status)
	case status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		return &permanentError{fmt.Errorf("%s: HTTP %d: %s", what, status, printable(answer[:min(len(answer), 200)]))}
	}
	return fmt.Errorf("%s: HTTP %d: %s", what, status, printable(answer[:min(len(answer), 200)]))
}

// do sends one request and reads up to maxAnswer bytes of the answer.
func (p *Pusher) do(ctx context.Context, method, path string, q url.Values, body []byte, token string) (int, []byte, error) {
	p.mu.Lock()
	base := p.creds.URL
	p.mu.Unlock()
	u, err := url.JoinPath(base, path)
	if err != nil {
		return 0, nil, fmt.Errorf("building the URL: %w", err)
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("building the request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("User-Agent", p.cfg.UserAgent)
	req.Header.Set("Accept", "application/json")
	res, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(res.Body, maxAnswer))
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer: %w", err)
	}
	return res.StatusCode, answer, nil
}

// down records a failed attempt; the first of an outage is logged.
func (p *Pusher) down(err error) {
	if p.outage {
		p.log.Debug("crowdsec push failed", zap.Error(err))
		return
	}
	p.outage = true
	fields := []zap.Field{zap.Error(err), zap.Int("queued", p.Queued())}
	if errors.Is(err, ErrLoginRejected) {
		p.log.Error("crowdsec LAPI rejected the machine credentials; bans are queued until it accepts them", fields...)
		return
	}
	p.log.Warn("crowdsec LAPI unavailable; bans are queued and retried", fields...)
}

func (p *Pusher) recovered() {
	if p.outage {
		p.outage = false
		p.log.Info("crowdsec LAPI reachable again; queued bans are being pushed", zap.Int("queued", p.Queued()))
	}
}
