package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// closeWriteTimeout bounds writing the in-band Error frame to a client.
const closeWriteTimeout = 5 * time.Second

// upstream is one Deepgram endpoint a service routes to.
type upstream struct {
	base *url.URL
	// host is the Host header: Deepgram answers 404 to agent.deepgram.com:443,
	// so a default port never goes in it.
	host string
}

func newUpstream(raw string) (upstream, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return upstream{}, fmt.Errorf("parse upstream: %w", err)
	}
	host := u.Host
	if p := u.Port(); (u.Scheme == "wss" && p == "443") || (u.Scheme == "ws" && p == "80") {
		host = u.Hostname()
	}
	return upstream{base: u, host: host}, nil
}

// target is the URL dialled for one session: the upstream's own query, then
// the client's parameters in their order and encoding.
func (u upstream) target(forwarded string) string {
	t := *u.base
	switch {
	case t.RawQuery == "":
		t.RawQuery = forwarded
	case forwarded != "":
		t.RawQuery += "&" + forwarded
	}
	return t.String()
}

// relay serves the WebSocket route: it checks each request, dials Deepgram
// with the key it holds and runs one session per client.
type relay struct {
	cfg      *Config
	log      *slog.Logger
	apiKey   string
	agent    upstream
	listen   upstream
	dialOpts websocket.DialOptions
	sessions sessionSet
	auth     *authenticator
	origins  *originChecker
	users    *userLimits
	watchdog watchdog
	metrics  *metrics
	policy   *settingsPolicy // nil: Settings pass untouched
	scrub    *scrubber
	texts    *textBudget
	// dialTimeout is upstreamDialTimeout; tests shorten it.
	dialTimeout time.Duration
	// draining is set by the first shutdown signal: new upgrades get 503.
	draining atomic.Bool
	// stop ends the watchdog and the JWKS refresher; stopped says they ended.
	stop    context.CancelFunc
	stopped chan struct{}
}

func newRelay(cfg *Config, apiKey string, policy *settingsPolicy, log *slog.Logger) (*relay, error) {
	agent, err := newUpstream(cfg.AgentURL)
	if err != nil {
		return nil, fmt.Errorf("DEEPGRAM_AGENT_URL: %w", err)
	}
	listen, err := newUpstream(cfg.ListenURL)
	if err != nil {
		return nil, fmt.Errorf("DEEPGRAM_LISTEN_URL: %w", err)
	}
	origins, err := newOriginChecker(cfg.AllowedOrigins)
	if err != nil {
		return nil, err
	}
	auth, err := newAuthenticator(cfg, &http.Client{Timeout: jwksTimeout}, log)
	if err != nil {
		return nil, err
	}
	rl := &relay{
		cfg:         cfg,
		policy:      policy,
		scrub:       newScrubber(apiKey, policy.secretValues()),
		auth:        auth,
		origins:     origins,
		users:       newUserLimits(cfg.MaxSessionsPerUser, cfg.SessionRatePerMinute),
		watchdog:    newWatchdog(cfg.IdleTimeout, cfg.WriteTimeout, cfg.MaxSessionDuration, textGatherTimeout),
		metrics:     newMetrics(version),
		stopped:     make(chan struct{}),
		log:         log,
		apiKey:      apiKey,
		dialTimeout: upstreamDialTimeout,
		texts:       newTextBudget(cfg.MaxMessageBytes),
		agent:       agent,
		listen:      listen,
		dialOpts: websocket.DialOptions{
			HTTPClient: &http.Client{
				Transport: newUpgradeTransport(),
				// A 3xx is Deepgram's answer, never a place to go:
				// following it would send the key (and the forwarded
				// query, in a Referer) to whatever Location names. The
				// 3xx itself reaches dial, which answers UPSTREAM_REJECTED.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
			HTTPHeader:      http.Header{"Authorization": {"Token " + apiKey}},
			CompressionMode: websocket.CompressionDisabled,
		},
	}
	rl.sessions.init()
	ctx, stop := context.WithCancel(context.Background())
	rl.stop = func() { stop(); auth.stop() }
	go rl.watch(ctx)
	return rl, nil
}

// close stops the relay's background work: the watchdog and the JWKS
// refresher. Sessions are the drain's business.
func (rl *relay) close() {
	rl.stop()
	<-rl.stopped
}

// watch runs the watchdog over the live sessions until ctx ends, and now and
// then forgets idle identities.
func (rl *relay) watch(ctx context.Context) {
	defer close(rl.stopped)
	tick := time.NewTicker(rl.watchdog.tick)
	defer tick.Stop()
	lastForget := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, s := range rl.sessions.snapshot() {
				rl.metrics.flush(s)
				if s.hasEnded() {
					continue // closing already
				}
				if o, ok := rl.watchdog.check(s, now); ok {
					go s.end(o)
				}
			}
			if now.Sub(lastForget) >= time.Minute {
				rl.users.forget(now)
				lastForget = now
			}
		}
	}
}

// routeError is a request refused before the upgrade, with its HTTP status.
type routeError struct {
	status int
	msg    string
}

func (e *routeError) Error() string { return e.msg }

// route picks the upstream from ?service= and returns the query to forward:
// every parameter but service and token, in the client's order and encoding.
func (rl *relay) route(rawQuery string) (service string, up upstream, forwarded string, err error) {
	var kept []string
	seen := false
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		rawKey, rawValue, _ := strings.Cut(part, "=")
		key, kerr := url.QueryUnescape(rawKey)
		value, verr := url.QueryUnescape(rawValue)
		if kerr != nil || verr != nil {
			return "", upstream{}, "", &routeError{http.StatusBadRequest, "malformed query string"}
		}
		switch {
		case key == "service":
			if seen && value != service {
				return "", upstream{}, "", &routeError{http.StatusBadRequest, "conflicting service parameters"}
			}
			service, seen = value, true
		case strings.EqualFold(key, "token"):
			// The user's token is for dgrelay only: Deepgram never sees it.
		default:
			kept = append(kept, part)
		}
	}
	switch service {
	case "", "agent":
		return "agent", rl.agent, strings.Join(kept, "&"), nil
	case "transcription":
		return "transcription", rl.listen, strings.Join(kept, "&"), nil
	}
	return "", upstream{}, "", &routeError{http.StatusBadRequest, "unknown service: use agent or transcription"}
}

// isWebSocketUpgrade reports whether r asks for a WebSocket, checked before
// anything is dialled so that a plain request costs nothing upstream.
func isWebSocketUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet &&
		headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, t := range headerTokens(h, name) {
		if strings.EqualFold(t, token) {
			return true
		}
	}
	return false
}

// ServeHTTP is the WebSocket route. Its steps run in this order so that every
// refusal that can be an HTTP status is one, and nothing is dialled upstream
// for a request that will be refused.
func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rl.draining.Load() {
		rl.refuseDraining(w)
		return
	}
	if !isWebSocketUpgrade(r) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "this endpoint speaks WebSocket only", http.StatusUpgradeRequired)
		return
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" || r.Header.Get("Sec-WebSocket-Key") == "" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "unsupported WebSocket handshake (want version 13)", http.StatusBadRequest)
		return
	}
	service, up, forwarded, err := rl.route(r.URL.RawQuery)
	if err != nil {
		var re *routeError
		errors.As(err, &re)
		http.Error(w, re.msg, re.status)
		return
	}
	if !rl.origins.allowed(r) {
		rl.metrics.refusals.WithLabelValues("origin").Inc()
		// The origin is logged (bounded) so that a missing ALLOWED_ORIGINS
		// entry is easy to see; it is a page's address, not a secret.
		rl.logFor(cloudTrace(r, rl.cfg.GoogleCloudProject)).Info("session refused", "refusal", "origin", "origin", rl.redact(r.Header.Get("Origin")),
			"remote", clientIP(r, rl.cfg.TrustProxyHeaders))
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	token, err := tokenFrom(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}

	s := &session{
		relay:   rl,
		id:      newSessionID(),
		service: service,
		remote:  clientIP(r, rl.cfg.TrustProxyHeaders),
		trace:   cloudTrace(r, rl.cfg.GoogleCloudProject),
		started: time.Now(),
	}
	if rl.auth.enabled() {
		sub, err := rl.auth.verify(token)
		if err != nil {
			f := errTokenInvalid
			errors.As(err, &f)
			rl.refuseAfterUpgrade(w, r, s, 4401, f.reason, "token_"+f.label)
			return
		}
		s.user, s.identity = sub, "sub:"+sub
	} else {
		s.identity = "ip:" + s.remote
	}

	switch rl.sessions.begin(rl.cfg.MaxSessions) {
	case admitClosed:
		rl.refuseDraining(w)
		return
	case admitFull:
		rl.refuseAfterUpgrade(w, r, s, websocket.StatusTryAgainLater, "relay full, try again", "instance_full")
		return
	}
	user, limit := rl.users.acquire(s.identity, s.started)
	if user == nil {
		rl.sessions.done()
		reason := "too many sessions"
		if limit == "rate" {
			reason = "too many new sessions"
		}
		rl.refuseAfterUpgrade(w, r, s, 4429, reason, limit)
		return
	}
	s.userText = &user.text
	if !rl.open(w, r, s, up, forwarded) {
		rl.users.release(s.identity)
		rl.sessions.done()
		return
	}
	// The session runs on goroutines of its own and this one returns: the
	// handler's stack, grown by the handshake, and the request go with it,
	// which is a third of an idle session's memory.
	go rl.serveSession(s)
}

// open connects s: Deepgram first, then the client's upgrade. It reports
// whether both are up; when not, it has answered the client.
func (rl *relay) open(w http.ResponseWriter, r *http.Request, s *session, up upstream, forwarded string) bool {
	// The upstream is dialled before the client's upgrade is accepted: the
	// browser cannot send until its socket opens, so the Settings it sends
	// the instant it does always find Deepgram connected, with no buffer
	// and no bound to choose. The cost is that the client's handshake waits
	// for Deepgram's, which a browser does anyway before Welcome.
	upConn, upRaw, failure := rl.dial(r.Context(), up, forwarded, s)
	if failure != nil && failure.clientGone {
		// Nothing is answered: the connection it would go on is gone.
		rl.clientGone(s)
		return false
	}

	client, clientRaw, err := rl.accept(w, r)
	if err != nil {
		// Accept has written the HTTP answer; a client that left during the
		// dial lands here too.
		if upConn != nil {
			upConn.CloseNow()
		}
		// The error quotes the client's own headers: bounded and cleaned.
		s.log().Info("client handshake failed", "session", s.id, "remote", s.remote, "error", rl.redact(err.Error()))
		return false
	}
	if failure != nil {
		rl.refuse(client, s, failure)
		return false
	}
	clientRaw.release(client)
	upRaw.release(upConn)
	s.client, s.upstream = newPeer(clientRaw, sideClient), newPeer(upRaw, sideUpstream)
	return true
}

// serveSession relays an open session until it ends, then accounts for it
// and releases its admission.
func (rl *relay) serveSession(s *session) {
	defer rl.sessions.done()
	defer rl.users.release(s.identity)
	active := rl.metrics.sessionsActive.WithLabelValues(s.service)
	active.Inc()
	if !rl.sessions.add(s) {
		// The drain deadline passed while this session was dialling.
		s.end(restartOutcome)
	} else {
		s.run()
		rl.sessions.remove(s)
	}
	active.Dec()
	rl.sessionEnded(s)
}

// refuseDraining answers an upgrade that arrives during the drain: the
// client should retry, and will land on another instance.
func (rl *relay) refuseDraining(w http.ResponseWriter) {
	rl.metrics.refusals.WithLabelValues("draining").Inc()
	w.Header().Set("Retry-After", "2")
	http.Error(w, "dgrelay is restarting; retry", http.StatusServiceUnavailable)
}

// accept upgrades the client's connection. The origin was checked already;
// the same patterns go to the library so that both agree. A client that
// offered "bearer" gets it selected, or its browser would fail the handshake.
// The connection under the returned Conn is also returned, for the session
// to take over.
func (rl *relay) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, *handoffConn, error) {
	hw := &handoffWriter{ResponseWriter: w}
	c, err := websocket.Accept(hw, r, &websocket.AcceptOptions{
		Subprotocols:    []string{"bearer"},
		OriginPatterns:  rl.cfg.AllowedOrigins,
		CompressionMode: websocket.CompressionDisabled,
	})
	return c, hw.conn, err
}

// handoffWriter is the ResponseWriter Accept hijacks through: it keeps the
// connection, and the bytes a client sent right after its upgrade request,
// which net/http had read ahead.
type handoffWriter struct {
	http.ResponseWriter
	conn *handoffConn
}

func (hw *handoffWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(hw.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	hw.conn = &handoffConn{Conn: conn}
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		hw.conn.early = bytes.Clone(early)
	}
	return hw.conn, brw, nil
}

// handoffConn is a connection coder/websocket does a handshake on and then
// hands over: once released, the library's Close leaves it open for the
// session, which reads and writes its frames from then on.
type handoffConn struct {
	net.Conn
	// early is what was read past the handshake and not yet by anyone.
	early []byte
	// readEarly makes Read return early first. On the client side it is
	// false: net/http's reader, which the library reads through, has the
	// same bytes.
	readEarly bool
	released  atomic.Bool
}

func (h *handoffConn) Read(p []byte) (int, error) {
	if h.readEarly && len(h.early) > 0 {
		n := copy(p, h.early)
		h.early = h.early[n:]
		return n, nil
	}
	return h.Conn.Read(p)
}

func (h *handoffConn) Close() error {
	if h.released.Load() {
		return nil
	}
	return h.Conn.Close()
}

// release takes h from the library's Conn c: c's buffers go back to its pools
// and h stays open.
func (h *handoffConn) release(c *websocket.Conn) {
	h.released.Store(true)
	_ = c.CloseNow()
}

// refuseAfterUpgrade answers a refusal that must be a close code: the
// browser's WebSocket API shows close codes, not HTTP statuses. Nothing is
// dialled upstream.
func (rl *relay) refuseAfterUpgrade(w http.ResponseWriter, r *http.Request, s *session, code websocket.StatusCode, reason, label string) {
	if cause, ok := strings.CutPrefix(label, "token_"); ok {
		rl.metrics.authFailures.WithLabelValues(cause).Inc()
	} else {
		rl.metrics.refusals.WithLabelValues(label).Inc()
	}
	s.log().Info("session refused", "refusal", label, "close", int(code), "user", s.user, "remote", s.remote)
	c, _, err := rl.accept(w, r)
	if err != nil {
		return
	}
	_ = c.Close(code, reason)
}

// upstreamFailure is why a session could not reach Deepgram, in the words the
// client is sent. Nothing in it comes from the key.
type upstreamFailure struct {
	Type        string `json:"type"`
	Code        string `json:"code"`
	Description string `json:"description"`
	status      int    // Deepgram's HTTP status, 0 when none came
	cause       error
	// clientGone: the client left and its request's end cancelled the
	// dial. Deepgram did not fail, and there is no one to tell.
	clientGone bool
}

// dial connects to Deepgram for s. On failure it says why, in words for the
// client. The connection under the returned Conn is also returned, for the
// session to take over.
func (rl *relay) dial(ctx context.Context, up upstream, forwarded string, s *session) (*websocket.Conn, *handoffConn, *upstreamFailure) {
	ctx, cancel := context.WithTimeout(ctx, rl.dialTimeout)
	defer cancel()
	start := time.Now()
	var conn *websocket.Conn
	var hc *handoffConn
	var resp *http.Response
	var err error
	for try := 0; ; try++ {
		s.dialTries = try + 1
		conn, hc, resp, err = rl.dialOnce(ctx, up, forwarded)
		cause := retryCause(resp, err)
		if err == nil || cause == "" || try == rl.cfg.UpstreamRetries {
			break
		}
		// Nothing was opened at Deepgram, so trying again is safe; the
		// pause is short and jittered so that sessions refused together
		// do not come back together.
		pause := upstreamRetryPause/2 + mrand.N(upstreamRetryPause)
		if deadline, _ := ctx.Deadline(); time.Until(deadline) < 2*pause {
			break
		}
		rl.metrics.dialRetries.WithLabelValues(s.service, cause).Inc()
		s.log().Info("upstream dial retried", "session", s.id, "service", s.service, "cause", cause,
			"error", rl.redact(urlQuery.ReplaceAllString(err.Error(), "?…")))
		select {
		case <-time.After(pause):
		case <-ctx.Done(): // the client left; the next try says so
		}
	}
	result := "ok"
	// Only the request's end cancels ctx (dial's own cancel runs later):
	// a dial it cut short says nothing about Deepgram.
	gone := err != nil && errors.Is(err, context.Canceled) && errors.Is(ctx.Err(), context.Canceled)
	if gone {
		result = "client_gone"
	} else if err != nil {
		result = "error"
	}
	s.dialTime = time.Since(start)
	rl.metrics.dialDuration.WithLabelValues(s.service, result).Observe(s.dialTime.Seconds())
	if resp != nil {
		s.dgRequestID = resp.Header.Get("dg-request-id")
	}
	if err == nil {
		return conn, hc, nil
	}
	if gone {
		return nil, nil, &upstreamFailure{cause: err, clientGone: true}
	}
	f := &upstreamFailure{Type: "Error", cause: err}
	switch {
	case resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
		f.status = resp.StatusCode
		f.Code = "UPSTREAM_AUTH"
		f.Description = fmt.Sprintf("Deepgram refused the relay's API key (HTTP %d); the relay's operator must check its Deepgram key", resp.StatusCode)
	case resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode != 0:
		f.status = resp.StatusCode
		f.Code = "UPSTREAM_REJECTED"
		f.Description = fmt.Sprintf("Deepgram refused the session (HTTP %d)", resp.StatusCode)
		if msg := rl.redact(resp.Header.Get("dg-error")); msg != "" {
			f.Description += ": " + msg
		}
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		f.Code = "UPSTREAM_UNAVAILABLE"
		f.Description = fmt.Sprintf("Deepgram did not answer within %s", rl.dialTimeout)
	default:
		f.Code = "UPSTREAM_UNAVAILABLE"
		f.Description = "Deepgram could not be reached"
	}
	return nil, nil, f
}

// upstreamRetryPause is the middle of the pause before a dial is tried again.
const upstreamRetryPause = 200 * time.Millisecond

// dialOnce is one try at Deepgram's WebSocket.
func (rl *relay) dialOnce(ctx context.Context, up upstream, forwarded string) (*websocket.Conn, *handoffConn, *http.Response, error) {
	slot := new(handoffSlot)
	opts := rl.dialOpts
	opts.Host = up.host
	conn, resp, err := websocket.Dial(withHandoffSlot(ctx, slot), up.target(forwarded), &opts)
	if err == nil && slot.conn == nil {
		// Only upgradeTransport dials; anything else is a bug here.
		conn.CloseNow()
		conn, err = nil, errors.New("upgraded connection not handed over")
	}
	return conn, slot.conn, resp, err
}

// retryCause says why a failed dial may be tried again, or "" when another
// try would meet the same answer (a refused key, a bad request, a
// certificate that does not verify) or the time is spent. Retried: a
// connection refused or cut before Deepgram answered, and the 502, 503 and
// 504 its front end answers while a backend restarts.
func retryCause(resp *http.Response, err error) string {
	switch {
	case err == nil:
		return ""
	case resp != nil && resp.StatusCode != 0:
		switch resp.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return "http_" + strconv.Itoa(resp.StatusCode)
		}
		return ""
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || isTimeout(err):
		return ""
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connect"
	}
	return ""
}

// urlQuery matches the query of a URL quoted in an error: the dial error
// names the target, and a log line carries no query string.
var urlQuery = regexp.MustCompile(`\?[^"\s]*`)

// redact makes a message that may quote Deepgram, a client or an error fit
// for a log line or an Error frame: bounded, and free of the key and the
// policy's secrets.
func (rl *relay) redact(msg string) string { return rl.scrub.clean(msg) }

// refuse tells a client that Deepgram could not be reached: first in band,
// which the React component shows, then close 1014 (bad gateway).
func (rl *relay) refuse(client *websocket.Conn, s *session, f *upstreamFailure) {
	frame, _ := json.Marshal(f)
	ctx, cancel := context.WithTimeout(context.Background(), closeWriteTimeout)
	defer cancel()
	_ = client.Write(ctx, websocket.MessageText, frame)
	reason := "upstream unavailable"
	if f.Code == "UPSTREAM_AUTH" {
		reason = "upstream refused the relay's key"
	} else if f.Code == "UPSTREAM_REJECTED" {
		reason = "upstream refused the session"
	}
	_ = client.Close(websocket.StatusBadGateway, reason)
	rl.metrics.upstreamErrors.WithLabelValues(f.Code).Inc()
	rl.metrics.sessionsTotal.WithLabelValues(s.service, "upstream_failed").Inc()
	rl.metrics.closeCodes.WithLabelValues("client", codeLabel(websocket.StatusBadGateway)).Inc()
	s.log().Warn("upstream dial failed",
		"session", s.id, "service", s.service, "code", f.Code, "upstream_status", f.status,
		"dg_request_id", s.dgRequestID, "dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries, "remote", s.remote, "error", rl.redact(urlQuery.ReplaceAllString(f.cause.Error(), "?…")))
}

// clientGone records a client that left while Deepgram was being dialled. It
// is not counted or logged as an upstream failure: clients opening and
// dropping connections must not look like a Deepgram outage.
func (rl *relay) clientGone(s *session) {
	rl.metrics.sessionsTotal.WithLabelValues(s.service, "client_gone").Inc()
	rl.metrics.closeCodes.WithLabelValues("client", codeLabel(0)).Inc()
	s.log().Info("client left during the upstream dial",
		"session", s.id, "service", s.service, "cause", "client_gone",
		"dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries, "remote", s.remote)
}

// sessionEnded records a relayed session in the metrics and its log line.
func (rl *relay) sessionEnded(s *session) {
	o := s.result()
	m := rl.metrics
	m.flush(s)
	m.sessionsTotal.WithLabelValues(s.service, o.cause).Inc()
	m.sessionDuration.WithLabelValues(s.service).Observe(time.Since(s.started).Seconds())
	m.closeCodes.WithLabelValues("client", codeLabel(o.clientCode)).Inc()
	m.closeCodes.WithLabelValues("upstream", codeLabel(o.upstreamCode)).Inc()
	up, down := &s.up, &s.down
	s.log().Info("session end",
		"session", s.id,
		"service", s.service,
		"duration_ms", time.Since(s.started).Milliseconds(),
		"up_messages", up.messages.Load(), "up_bytes", up.bytes.Load(),
		"down_messages", down.messages.Load(), "down_bytes", down.bytes.Load(),
		"closed_by", o.closedBy, "cause", o.cause,
		"client_close", int(o.clientCode), "upstream_close", int(o.upstreamCode),
		"dg_request_id", s.dgRequestID,
		"dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries,
		"user", s.user,
		"remote", s.remote)
}

func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// flow counts one direction of a session. Each counter is written by one pipe
// only; atomics let the log line and the timers read them while it runs.
type flow struct {
	messages atomic.Int64
	bytes    atomic.Int64
	// writing is true while a write to this direction's destination is in
	// progress: the watchdog's view of a peer that stopped reading.
	writing atomic.Bool
	// gathering is when the text message being read whole began (Unix
	// nanoseconds), 0 when none is: the watchdog's view of one left
	// unfinished.
	gathering atomic.Int64
}

// outcome is how a session ended: who ended it and the close each side gets
// (or sent). A zero code means that side's connection is dropped without a
// close frame, because it is gone.
type outcome struct {
	closedBy       string // client, upstream or relay
	cause          string // closed, vanished, too_big, protocol_error, drain, ...
	clientCode     websocket.StatusCode
	clientReason   string
	upstreamCode   websocket.StatusCode
	upstreamReason string
	// clientError is an Error text frame the client gets before its close.
	clientError []byte
}

// restartOutcome is how a drain ends a session: 1012 tells the client to
// reconnect (it lands on another instance), and Deepgram gets a normal close.
var restartOutcome = outcome{closedBy: "relay", cause: "drain",
	clientCode: websocket.StatusServiceRestart, clientReason: "service restart",
	upstreamCode: websocket.StatusNormalClosure, upstreamReason: "relay restarting"}

// session is one client and its Deepgram connection.
type session struct {
	relay       *relay
	id          string
	service     string
	remote      string // client IP
	trace       string // the request's Cloud Trace name, for log lines; may be empty
	user        string // the token's sub; empty when unauthenticated
	identity    string // what the per-user limits count: sub or IP
	dgRequestID string
	dialTime    time.Duration // opening Deepgram's socket, retries included
	dialTries   int
	started     time.Time
	client      *peer
	upstream    *peer
	up, down    flow // client→upstream, upstream→client
	// userText counts what the sessions of s's identity hold of the text
	// budget.
	userText *atomic.Int64
	timers   timers

	// upReported and downReported are what the metrics have counted of up
	// and down; guarded by mu.
	upReported, downReported flowReported

	// closing is set once end has run: the pipes check it between frames.
	closing atomic.Bool

	mu      sync.Mutex // guards ended, outcome, closeBy and the reported counts
	ended   bool
	outcome outcome
	closeBy time.Time
}

// log is the relay's logger for lines about s.
func (s *session) log() *slog.Logger { return s.relay.logFor(s.trace) }

// run relays both directions until each has finished, then closes both
// connections. One pipe runs on the calling goroutine, the other on its own:
// two goroutines a session.
func (s *session) run() {
	maxMsg := s.relay.cfg.MaxMessageBytes
	up := &pipe{s: s, src: s.client, dst: s.upstream, flow: &s.up, maxMsg: maxMsg}
	down := &pipe{s: s, src: s.upstream, dst: s.client, flow: &s.down, maxMsg: maxMsg}
	if s.relay.policy != nil {
		up.text = s.policyFilter
	}
	// Deepgram's words are scrubbed of the key and the policy's secrets
	// before a client reads them: text, control payloads, close reasons.
	// Binary messages are audio, relayed as they came.
	sc := s.relay.scrub
	down.text = func(msg []byte) policyVerdict { return policyVerdict{out: sc.text(msg)} }
	down.scrub = sc.short
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		down.run()
	}()
	up.run()
	wg.Wait()
	_ = s.client.conn.Close()
	_ = s.upstream.conn.Close()
}

type side int

const (
	sideClient side = iota
	sideUpstream
)

func (d side) String() string {
	if d == sideClient {
		return "client"
	}
	return "upstream"
}

// closedOutcome: src sent a close frame. A deliberate close is passed on as
// it came; 1005 (a close frame without a code) goes on as a close frame
// without a code, and src gets its own code back.
func closedOutcome(src side, code websocket.StatusCode, reason string) outcome {
	return sideOutcome(src, "closed", code, "", code, reason)
}

// vanishedOutcome: src is gone without a close frame (1006 is not sendable).
// The client hears that the gateway failed, Deepgram that the client went
// away.
func vanishedOutcome(src side) outcome {
	if src == sideUpstream {
		return sideOutcome(src, "vanished", 0, "", websocket.StatusBadGateway, "upstream went away")
	}
	return sideOutcome(src, "vanished", 0, "", websocket.StatusGoingAway, "client went away")
}

// tooBigOutcome: src sent a message over MAX_MESSAGE_BYTES.
func tooBigOutcome(src side) outcome {
	return sideOutcome(src, "too_big", websocket.StatusMessageTooBig, "message too big",
		websocket.StatusNormalClosure, src.String()+" message too big")
}

// busyOutcome: a text message from src that the relay must read whole would
// have passed the text budget (src's identity's share, or the instance's).
// Whichever side sent it, the client is told to try again (1013, with
// RELAY_BUSY in band) and Deepgram gets a normal close.
func busyOutcome(src side) outcome {
	return outcome{closedBy: src.String(), cause: "text_budget",
		clientCode: websocket.StatusTryAgainLater, clientReason: "relay busy, try again",
		clientError:  errorFrame("RELAY_BUSY", "the relay is busy; try again"),
		upstreamCode: websocket.StatusNormalClosure, upstreamReason: src.String() + " message refused: relay busy"}
}

// slowTextOutcome: a text message from src that the relay reads whole was
// not finished within textGatherTimeout. A client that does gets 1008;
// Deepgram that does is a stalled gateway for the client.
func slowTextOutcome(src side) outcome {
	if src == sideUpstream {
		return sideOutcome(src, "text_timeout", websocket.StatusPolicyViolation, "message not finished in time",
			websocket.StatusBadGateway, "upstream stalled")
	}
	return sideOutcome(src, "text_timeout", websocket.StatusPolicyViolation, "message not finished in time",
		websocket.StatusNormalClosure, "client message not finished in time")
}

// errorFrame is the in-band Error message a client reads (the React
// component's onError) before its close.
func errorFrame(code, description string) []byte {
	b, _ := json.Marshal(struct {
		Type        string `json:"type"`
		Code        string `json:"code"`
		Description string `json:"description"`
	}{"Error", code, description})
	return b
}

// protocolOutcome: src broke RFC 6455 (an unmasked client frame, a masked
// server frame, reserved bits, an unknown opcode, ...). A client that does
// has a bug; Deepgram that does is a gateway failure for the client.
func protocolOutcome(src side) outcome {
	if src == sideUpstream {
		return sideOutcome(src, "protocol_error", websocket.StatusProtocolError, "protocol error",
			websocket.StatusBadGateway, "upstream protocol error")
	}
	return sideOutcome(src, "protocol_error", websocket.StatusProtocolError, "protocol error",
		websocket.StatusNormalClosure, "client protocol error")
}

// sideOutcome is an outcome src caused: src gets srcCode, the other side code.
func sideOutcome(src side, cause string, srcCode websocket.StatusCode, srcReason string, code websocket.StatusCode, reason string) outcome {
	o := outcome{closedBy: src.String(), cause: cause}
	if src == sideClient {
		o.clientCode, o.clientReason, o.upstreamCode, o.upstreamReason = srcCode, srcReason, code, reason
	} else {
		o.upstreamCode, o.upstreamReason, o.clientCode, o.clientReason = srcCode, srcReason, code, reason
	}
	return o
}

// end starts closing the session as o says, once; later calls do nothing. It
// does not wait: it wakes both pipes, each of which writes its destination's
// close and then waits, until the deadline, for its source's.
func (s *session) end(o outcome) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended, s.outcome = true, o
	s.closeBy = time.Now().Add(closeTimeout)
	deadline := s.closeBy
	s.mu.Unlock()
	s.closing.Store(true)
	for _, p := range []*peer{s.client, s.upstream} {
		// The write deadline bounds the closes and a write stuck on a
		// peer that stopped reading; the past read deadline wakes the
		// pipe waiting on p.
		_ = p.conn.SetWriteDeadline(deadline)
		_ = p.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// closeDeadline is when the closing session stops waiting for its peers.
func (s *session) closeDeadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeBy
}

// closeFrames are the frames that close side to as the outcome says: an Error
// frame first where there is one, then the close; nil when side to is gone.
// A side that sent the close gets its code back, as RFC 6455 §5.5.1 asks.
func (s *session) closeFrames(to side) []byte {
	o := s.result()
	code, reason, errFrame := o.clientCode, o.clientReason, o.clientError
	if to == sideUpstream {
		code, reason, errFrame = o.upstreamCode, o.upstreamReason, nil
	}
	if code == 0 {
		return nil
	}
	if o.cause == "closed" && o.closedBy == to.String() {
		reason = ""
	}
	masked := to == sideUpstream
	var b []byte
	if errFrame != nil {
		b = appendFrame(b, opText, errFrame, masked)
	}
	return appendFrame(b, opClose, closePayload(code, reason), masked)
}

// hasEnded reports whether end has run (the closes may still be under way).
func (s *session) hasEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// result is the outcome, for the log line once the session has stopped.
func (s *session) result() outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outcome
}

// kill drops both connections without close frames: the last step of a drain
// whose peers did not answer in time.
func (s *session) kill() {
	_ = s.client.conn.Close()
	_ = s.upstream.conn.Close()
}

// textFilter decides what becomes of one whole text message: the Settings
// policy upstream, the secret scrub downstream.
type textFilter func(msg []byte) policyVerdict

// policyFilter applies the Settings policy to a client text message and logs
// what it stripped: paths only, never values.
func (s *session) policyFilter(msg []byte) policyVerdict {
	v := s.relay.policy.check(msg)
	if len(v.stripped) > 0 {
		s.relay.metrics.policyViolations.WithLabelValues("strip").Add(float64(len(v.stripped)))
		s.log().Info("settings policy: stripped", "session", s.id, "user", s.user,
			"paths", loggedPaths(v.stripped), "paths_total", len(v.stripped))
	}
	return v
}

// maxLoggedPaths and maxLoggedPathBytes bound what a log line holds of the
// paths a client chose: the metric counts them all, but a Settings with
// thousands of long keys must not become a log line as large (a 1 MB
// Settings made one of 0.9 MB, at the operator's expense).
const (
	maxLoggedPaths     = 20
	maxLoggedPathBytes = 128
)

// loggedPaths is the first maxLoggedPaths of paths, each cut to
// maxLoggedPathBytes at a character boundary and marked "…" where cut.
func loggedPaths(paths []string) []string {
	out := make([]string, 0, min(len(paths), maxLoggedPaths))
	for _, p := range paths[:min(len(paths), maxLoggedPaths)] {
		out = append(out, loggedPath(p))
	}
	return out
}

func loggedPath(p string) string {
	if len(p) <= maxLoggedPathBytes {
		return p
	}
	n := maxLoggedPathBytes
	for n > 0 && !utf8.RuneStart(p[n]) {
		n--
	}
	return p[:n] + "…"
}

// refuseSettings ends a session whose message the policy refused: the client
// is told in band why, then closed 1008; Deepgram received nothing of that
// message and gets a normal close.
func (s *session) refuseSettings(why string) {
	s.relay.metrics.policyViolations.WithLabelValues("refuse").Inc()
	// why names the client's own keys: bounded and cleaned for the log
	// and the Error frame alike.
	why = s.relay.redact(why)
	s.log().Info("settings policy: refused", "session", s.id, "user", s.user, "why", why)
	s.end(outcome{closedBy: "relay", cause: "settings_refused", clientError: errorFrame("SETTINGS_REFUSED", why),
		clientCode: websocket.StatusPolicyViolation, clientReason: "settings refused",
		upstreamCode: websocket.StatusNormalClosure, upstreamReason: "settings refused"})
}
