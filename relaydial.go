package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// upgradeTransport is the http.RoundTripper coder/websocket dials Deepgram
// through. It does only what a WebSocket handshake needs: connect (through an
// HTTPS_PROXY from the environment if one is set, then TLS for wss), write the
// request, read the 101, and hand the bare connection to the session, which
// relays frames on it itself. net/http's Transport cannot be used: it hides
// the connection it upgraded behind the response body, and the session's
// pipe must have the *tls.Conn itself, over a socket it can wait on
// (wspipe.NewTLSSocket), to read Deepgram without holding a buffer.
type upgradeTransport struct {
	dialer net.Dialer
	// tlsConfig is cloned per dial with the server's name; nil is the
	// system roots, TLS 1.2 at least.
	tlsConfig *tls.Config
	// proxy picks the proxy for a request; http.ProxyFromEnvironment.
	proxy func(*http.Request) (*url.URL, error)
}

func newUpgradeTransport() *upgradeTransport {
	return &upgradeTransport{
		dialer: net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 15 * time.Second},
		tlsConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"http/1.1"},
			// Every session dials Deepgram anew; resuming a TLS session
			// skips the certificate chain's verification and signature,
			// the bulk of a connect's CPU (nginx resumes by default). The
			// cache holds a ticket per server name.
			ClientSessionCache: tls.NewLRUClientSessionCache(upstreamTLSSessions),
		},
		proxy: http.ProxyFromEnvironment,
	}
}

// upstreamTLSSessions bounds the TLS session cache: Deepgram is two or three
// host names.
const upstreamTLSSessions = 16

// handshakeReadBuffer holds Deepgram's 101 response (about 400 bytes); a
// longer one still parses, in more reads.
const handshakeReadBuffer = 1024

func (t *upgradeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	proxy, err := t.proxy(req)
	if err != nil {
		// The error quotes the variable's value, password and all.
		return nil, errors.New("HTTPS_PROXY is not a valid URL")
	}
	if proxy != nil && proxy.Scheme != "http" {
		return nil, fmt.Errorf("HTTPS_PROXY: a %s:// proxy is not supported, only http://", proxy.Scheme)
	}
	ctx := req.Context()
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = "80"
		if req.URL.Scheme == "https" {
			port = "443"
		}
	}
	addr := net.JoinHostPort(host, port)
	dialAddr := addr
	if proxy != nil {
		dialAddr = proxy.Host
		if proxy.Port() == "" {
			dialAddr = net.JoinHostPort(proxy.Hostname(), "80")
		}
	}
	conn, err := t.dialer.DialContext(ctx, "tcp", dialAddr)
	if err != nil {
		return nil, err
	}
	// The context bounds the whole exchange: cancelling it unblocks any
	// read or write below by expiring the connection's deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	var resp *http.Response
	if proxy != nil {
		err = connectThrough(conn, proxy, addr)
	}
	if err == nil {
		resp, err = t.handshake(ctx, conn, req, host)
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("upstream handshake: %w", ctx.Err())
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return resp, nil
}

// connectThrough asks an HTTP proxy for a tunnel to addr (RFC 9110 §9.3.6).
func connectThrough(conn net.Conn, proxy *url.URL, addr string) error {
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if u := proxy.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("write CONNECT to proxy %s: %w", proxy.Host, err)
	}
	br := bufio.NewReaderSize(conn, handshakeReadBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fmt.Errorf("read CONNECT answer from proxy %s: %w", proxy.Host, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy %s refused CONNECT: %s", proxy.Host, resp.Status)
	}
	if br.Buffered() > 0 {
		// The server speaks only after the relay's first bytes.
		return fmt.Errorf("proxy %s sent bytes after its CONNECT answer", proxy.Host)
	}
	return nil
}

func (t *upgradeTransport) handshake(ctx context.Context, conn net.Conn, req *http.Request, host string) (*http.Response, error) {
	if req.URL.Scheme == "https" {
		cfg := t.tlsConfig.Clone()
		cfg.ServerName = host
		tc := tls.Client(wspipe.NewTLSSocket(conn), cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("tls handshake with %s: %w", host, err)
		}
		conn = tc
	}
	if err := req.Write(conn); err != nil {
		return nil, fmt.Errorf("write handshake: %w", err)
	}
	br := bufio.NewReaderSize(conn, handshakeReadBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("read handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// An error answer: its body is read (bounded by the caller) and
		// the connection closed with it.
		resp.Body = &closingBody{ReadCloser: resp.Body, conn: conn}
		return resp, nil
	}
	// The upgraded connection is the body, and goes to the session through
	// the slot. Bytes Deepgram sent right after its 101 (Welcome may come
	// in the same packet) are relayed first.
	hc := &handoffConn{Conn: conn, readEarly: true}
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		hc.early = bytes.Clone(early)
	}
	if slot, ok := ctx.Value(handoffSlotKey{}).(*handoffSlot); ok {
		slot.conn = hc
	}
	resp.Body = hc
	return resp, nil
}

// closingBody closes the connection with a refused handshake's body.
type closingBody struct {
	io.ReadCloser
	conn net.Conn
}

func (b *closingBody) Close() error {
	return errors.Join(b.ReadCloser.Close(), b.conn.Close())
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dial connects to Deepgram's service, trying again where another try can
// meet another answer; log carries the session's attributes for the retry
// lines. A probe (g.probe) tries once: it asks whether Deepgram is back, and
// while an outage is known no session adds retries to it.
func (rl *relay) dial(ctx context.Context, service string, up upstream, forwarded string, log *slog.Logger, g gate) dialed {
	ctx, cancel := context.WithTimeout(ctx, rl.dialTimeout)
	defer cancel()
	start := time.Now()
	var d dialed
	var resp *http.Response
	var err error
	for try := 0; ; try++ {
		d.tries = try + 1
		d.conn, d.handoff, resp, err = rl.dialOnce(ctx, up, forwarded)
		cause := retryCause(resp, err)
		if err == nil || cause == "" || try >= rl.cfg.UpstreamRetries || g.probe || g.o.isDown() {
			break
		}
		// Nothing was opened at Deepgram, so trying again is safe; the
		// pause is short and jittered so that sessions refused together
		// do not come back together.
		pause := upstreamRetryPause/2 + rand.N(upstreamRetryPause)
		if deadline, _ := ctx.Deadline(); time.Until(deadline) < 2*pause {
			break
		}
		rl.metrics.dialRetries.WithLabelValues(service, cause).Inc()
		log.Info("upstream dial retried", "service", service, "cause", cause,
			"error", rl.redactError(err))
		select {
		case <-time.After(pause):
		case <-ctx.Done(): // cut short; the next try says so
		}
	}
	result := "ok"
	// Only the caller cancels ctx (dial's own cancel runs later): the
	// client leaving or the drain deadline. A dial it cut short says
	// nothing about Deepgram.
	gone := err != nil && errors.Is(err, context.Canceled) && errors.Is(ctx.Err(), context.Canceled)
	if gone {
		result = "cancelled"
	} else if err != nil {
		result = "error"
	}
	d.took = time.Since(start)
	rl.metrics.dialDuration.WithLabelValues(service, result).Observe(d.took.Seconds())
	if resp != nil {
		if id := resp.Header.Get("dg-request-id"); rl.requestIDOK(id) {
			d.requestID = id
		}
	}
	switch {
	case err == nil:
	case gone:
		d.failure = &upstreamFailure{cause: err, cancelled: true}
	default:
		d.failure = rl.classify(resp, err)
	}
	return d
}

// classify puts a failed dial in the client's words.
func (rl *relay) classify(resp *http.Response, err error) *upstreamFailure {
	f := &upstreamFailure{cause: err}
	switch {
	case resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
		f.status, f.end = resp.StatusCode, refuseUpstreamAuth
		f.description = fmt.Sprintf("Deepgram refused the relay's API key (HTTP %d); the relay's operator must check its Deepgram key", resp.StatusCode)
	case resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode != 0:
		f.status, f.end = resp.StatusCode, refuseUpstreamRejected
		f.description = fmt.Sprintf("Deepgram refused the session (HTTP %d)", resp.StatusCode)
		if msg := rl.redact(urlQuery.ReplaceAllString(resp.Header.Get("dg-error"), "?…")); msg != "" {
			f.description += ": " + msg
		}
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		f.end = refuseUpstreamUnavailable
		f.description = fmt.Sprintf("Deepgram did not answer within %s", rl.dialTimeout)
	default:
		f.end = refuseUpstreamUnavailable
		f.description = "Deepgram could not be reached"
	}
	return f
}

// upstreamRetryPause is the middle of the pause before a dial is tried again.
const upstreamRetryPause = 200 * time.Millisecond

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

// outageFor is the outage state of service's Deepgram endpoint.
func (rl *relay) outageFor(service string) *outage {
	if service == "transcription" {
		return rl.listenOutage
	}
	return rl.agentOutage
}

// reachedDeepgram says whether a failed dial still heard Deepgram answer:
// any HTTP status but the 502, 503 and 504 its front end gives while a
// backend is away.
func reachedDeepgram(f *upstreamFailure) bool {
	switch f.status {
	case 0, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return false
	}
	return true
}

// dialed reports s's dial to its gate, logs and counts an outage's start and
// end, and says nothing when the client left during the dial.
func (rl *relay) dialed(s *session, g gate, d dialed) {
	if d.failure != nil && d.failure.cancelled {
		g.abandon()
		return
	}
	answered := d.failure == nil || reachedDeepgram(d.failure)
	failed := d.tries
	if answered {
		failed = 0
	}
	change, downFor, refused := g.report(answered, failed, time.Now())
	switch change {
	case outageBegan:
		rl.metrics.upstreamDown.WithLabelValues(s.service).Set(1)
		rl.log.Warn("upstream down: sessions are refused without a dial, one probes Deepgram", "service", s.service,
			"failed_dials", failed, "hold_ms", outageFirstHold.Milliseconds())
	case outageEnded:
		rl.metrics.upstreamDown.WithLabelValues(s.service).Set(0)
		rl.log.Info("upstream back", "service", s.service, "down_ms", downFor.Milliseconds(), "refused_without_dial", refused)
	}
}

// handoffSlotKey is the context key under which dial leaves a handoffSlot for
// the transport to put the upgraded connection in: coder/websocket's Dial
// returns a Conn, not the connection under it.
type handoffSlotKey struct{}

type handoffSlot struct{ conn *handoffConn }

// withHandoffSlot is ctx carrying slot, for a dial through upgradeTransport.
func withHandoffSlot(ctx context.Context, slot *handoffSlot) context.Context {
	return context.WithValue(ctx, handoffSlotKey{}, slot)
}

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

// newDialOptions is how every dial to Deepgram goes: through
// upgradeTransport, with the key, without compression.
func newDialOptions(apiKey string) websocket.DialOptions {
	return websocket.DialOptions{
		HTTPClient: &http.Client{
			Transport: newUpgradeTransport(),
			// A 3xx is Deepgram's answer, never a place to go: following
			// it would send the key (and the forwarded query, in a
			// Referer) to whatever Location names. The 3xx itself reaches
			// dial, which answers UPSTREAM_REJECTED.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		HTTPHeader:      http.Header{"Authorization": {"Token " + apiKey}},
		CompressionMode: websocket.CompressionDisabled,
	}
}

// redial dials Deepgram for a move of s, as open did: through its outage
// gate (a known outage fails the move at once), cut short by the drain.
func (rl *relay) redial(ctx context.Context, s *session) dialed {
	if !rl.users.allowMove(s.identity, time.Now()) {
		return dialed{failure: &upstreamFailure{end: refuseUserRate, description: "the user's calls moved faster than SESSION_RATE_PER_MINUTE lets it open them"}}
	}
	g := rl.outageFor(s.service).gate(time.Now(), s.identity)
	if !g.ok {
		return dialed{failure: &upstreamFailure{end: refuseUpstreamDown, description: "Deepgram is known to be unreachable"}}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(rl.dials, cancel)()
	d := rl.dial(ctx, s.service, s.endpoint, s.forwarded, s.log().With("session", s.id), g)
	rl.dialed(s, g, d)
	return d
}
