package main

import (
	"bufio"
	"bytes"
	"context"
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

	"dgrelay/internal/wspipe"

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
				if s.Closing() {
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
	if msg := badHandshake(r); msg != "" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, msg, http.StatusBadRequest)
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
	s.client, s.upstream = wspipe.NewPeer(clientRaw.Conn, clientRaw.early, wspipe.Client), wspipe.NewPeer(upRaw.Conn, upRaw.early, wspipe.Upstream)
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
		s.end(endDrain.outcome(""))
	} else {
		s.run()
		rl.sessions.remove(s)
	}
	active.Dec()
	s.ended()
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

// run relays both directions until each has finished, then closes both
// connections: the two pipes of the session, one on the calling goroutine,
// the other on its own. The first to end the session wakes the other.
func (s *session) run() {
	maxMsg := s.relay.cfg.MaxMessageBytes
	var upText wspipe.TextFilter
	if s.relay.policy != nil {
		upText = s.policyFilter
	}
	up := wspipe.New(s, s.client, s.upstream, &s.up, wspipe.Options{MaxMessage: maxMsg, Text: upText, Budget: s.budget()})
	// Deepgram's words are scrubbed of the key and the policy's secrets
	// before a client reads them: text, control payloads, close reasons.
	// Binary messages are audio, relayed as they came.
	sc := s.relay.scrub
	down := wspipe.New(s, s.upstream, s.client, &s.down, wspipe.Options{MaxMessage: maxMsg,
		Text: func(msg []byte) wspipe.Verdict { return wspipe.Verdict{Out: sc.text(msg)} }, Budget: s.budget(), Scrub: sc.short})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		down.Run()
	}()
	up.Run()
	wg.Wait()
	_ = s.client.Conn.Close()
	_ = s.upstream.Conn.Close()
}
