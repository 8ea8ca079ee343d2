package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// rawClient speaks WebSocket byte by byte, so a test can send what no library
// client would: frames split anywhere, broken frames, interleaved control
// frames.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func (h *harness) rawDial(query string) *rawClient {
	h.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	req := "GET /ws/deepgram-proxy/?" + query + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		h.t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		h.t.Fatalf("handshake: %v %v", resp, err)
	}
	c := &rawClient{t: h.t, conn: conn, br: br}
	if op, p := c.read(); op != opText || !strings.Contains(string(p), "Welcome") {
		h.t.Fatalf("first frame %x %q, want Welcome", op, p)
	}
	return c
}

// frame builds a client frame: first is the first header byte (FIN, RSV,
// opcode) as the test wants it, and the payload is masked with a fixed key.
func clientFrame(first byte, payload []byte) []byte {
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	b := []byte{first}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, payload...)
	applyMask(b[start:], key, 0)
	return b
}

func (c *rawClient) send(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// trickle sends b one byte per write, so that the relay reads frame headers
// and payloads split at every possible point.
func (c *rawClient) trickle(b []byte) {
	c.t.Helper()
	for i := range b {
		c.send(b[i : i+1])
		time.Sleep(200 * time.Microsecond)
	}
}

// read returns the next whole frame from the relay, which must be unmasked.
func (c *rawClient) read() (byte, []byte) {
	c.t.Helper()
	var hdr [maxHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:2]); err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	n := headerLen(hdr[1])
	if _, err := io.ReadFull(c.br, hdr[2:n]); err != nil {
		c.t.Fatalf("read frame header: %v", err)
	}
	var h frameHeader
	if _, err := parseHeader(hdr[:n], &h); err != nil || h.masked || !h.fin {
		c.t.Fatalf("frame header %x: %+v %v", hdr[:n], h, err)
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read payload: %v", err)
	}
	return h.opcode, p
}

// expectClose reads frames until a close and checks its code.
func (c *rawClient) expectClose(want websocket.StatusCode) string {
	c.t.Helper()
	for {
		op, p := c.read()
		if op != opClose {
			continue
		}
		code, reason, ok := parseClose(p)
		if !ok || code != want {
			c.t.Fatalf("close %d %q (valid %v), want %d", code, reason, ok, want)
		}
		return reason
	}
}

// TestFramesSplitAnywhere: frames that arrive a byte at a time, a message in
// fragments with a ping between them, and 16- and 64-bit lengths all reach
// Deepgram whole, and Deepgram's pong comes back.
func TestFramesSplitAnywhere(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.rawDial("")
	audio := bytes.Repeat([]byte{0xa5, 0x01, 0xff}, 100) // 300 B: a 16-bit length
	big := bytes.Repeat([]byte{7}, 70000)                // a 64-bit length
	var stream []byte
	stream = append(stream, clientFrame(0x82, audio)...)
	stream = append(stream, clientFrame(0x01, []byte(`{"type":"Inject`))...) // text, not final
	stream = append(stream, clientFrame(0x89, []byte("are you there"))...)   // ping between fragments
	stream = append(stream, clientFrame(0x00, []byte(`UserMessage",`))...)   // continuation
	stream = append(stream, clientFrame(0x80, []byte(`"content":"hi"}`))...) // final continuation
	c.trickle(stream)
	c.send(clientFrame(0x82, big))

	want := []struct {
		op      byte
		payload []byte
	}{
		{opBinary, audio},
		{opPong, []byte("are you there")},
		{opText, []byte(`{"type":"InjectUserMessage","content":"hi"}`)},
		{opBinary, big},
	}
	for _, w := range want {
		op, p := c.read()
		if op != w.op || !bytes.Equal(p, w.payload) {
			t.Fatalf("got opcode %x, %d bytes %.40q; want opcode %x, %d bytes %.40q", op, len(p), p, w.op, len(w.payload), w.payload)
		}
	}
	c.send(clientFrame(0x88, closePayload(4000, "done")))
	if reason := c.expectClose(4000); reason != "" {
		t.Fatalf("echo reason %q, want none", reason)
	}
	if got := h.upstreamClosed(); got.Code != 4000 || got.Reason != "done" {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestClientProtocolErrors: a client frame that breaks RFC 6455 gets 1002 and
// Deepgram a normal close; nothing of the bad frame is passed on.
func TestClientProtocolErrors(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	unmasked := []byte{0x82, 0x03, 1, 2, 3}
	hugeLength := []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	cases := []struct {
		name  string
		frame []byte
	}{
		{"unmasked frame", unmasked},
		{"reserved bit", clientFrame(0xc2, []byte("x"))},
		{"unknown opcode", clientFrame(0x83, []byte("x"))},
		{"fragmented ping", clientFrame(0x09, []byte("x"))},
		{"ping over 125 bytes", clientFrame(0x89, make([]byte, 126))},
		{"continuation first", clientFrame(0x80, []byte("x"))},
		{"text inside a fragmented message", append(clientFrame(0x01, []byte("a")), clientFrame(0x81, []byte("b"))...)},
		{"close with one byte", clientFrame(0x88, []byte{3})},
		{"close with 1005 on the wire", clientFrame(0x88, []byte{0x03, 0xed})},
		{"close with a reason not UTF-8", clientFrame(0x88, []byte{0x03, 0xe8, 0xff})},
		{"64-bit length with its top bit", hugeLength},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The eleven sessions come from one address, over its cap of
			// five: each must be gone before the next opens.
			h.settled()
			c := h.rawDial("")
			c.send(tc.frame)
			if reason := c.expectClose(websocket.StatusProtocolError); reason != "protocol error" {
				t.Fatalf("reason %q", reason)
			}
			if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client protocol error" {
				t.Fatalf("upstream got %+v", got)
			}
		})
	}
	waitForLog(t, h.logs, `"cause":"protocol_error"`)
}

// TestUpstreamProtocolError: Deepgram sending a masked frame is a gateway
// failure for the client (1014) and a protocol error for Deepgram (1002).
func TestUpstreamProtocolError(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	masked := hex.EncodeToString([]byte{0x82, 0x81, 1, 2, 3, 4, 5})
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"`+masked+`"}`))
	if ce := expectClose(t, c, websocket.StatusBadGateway); ce.Reason != "upstream protocol error" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if got := h.upstreamClosed(); got.Code != websocket.StatusProtocolError {
		t.Fatalf("upstream got %+v, want 1002", got)
	}
}

// TestFragmentedMessageTooBig: the limit counts a message's fragments
// together; the sender gets 1009 and Deepgram a normal close.
func TestFragmentedMessageTooBig(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_MESSAGE_BYTES": "1000"}, fakedeepgram.Options{})
	c := h.rawDial("")
	c.send(clientFrame(0x02, make([]byte, 600)))
	c.send(clientFrame(0x80, make([]byte, 600)))
	c.expectClose(websocket.StatusMessageTooBig)
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client message too big" {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestContinuationLengthOverflow: a first fragment, then a continuation that
// declares 2^63-1 bytes. The message length check must not overflow: the
// session ends with 1009 at once, no counter goes negative (a negative Add
// panics the process), and a text message gathered for a policy gives its
// bytes back.
func TestContinuationLengthOverflow(t *testing.T) {
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}}}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	huge := []byte{0x80, 0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}
	for _, first := range []byte{opBinary, opText} {
		c := h.rawDial("")
		c.send(clientFrame(first, bytes.Repeat([]byte("a"), 100))) // FIN=0
		c.send(huge)
		c.send(make([]byte, 4096)) // some of the 2^63-1 bytes
		c.expectClose(websocket.StatusMessageTooBig)
		c.conn.Close() // its close answer would be read as payload
		if got := h.upstreamClosed(); got.Reason != "client message too big" {
			t.Fatalf("opcode %d: upstream got %+v", first, got)
		}
		h.settled()
	}
	if held := h.relay.texts.used.Load(); held != 0 {
		t.Fatalf("%d bytes left in the text budget", held)
	}
	rec := httptest.NewRecorder()
	h.relay.metrics.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "dgrelay_bytes_total{") || strings.HasPrefix(line, "dgrelay_messages_total{") {
			if f := strings.Fields(line); len(f) != 2 || strings.HasPrefix(f[1], "-") || len(f[1]) > 12 {
				t.Fatalf("counter %q", line)
			}
		}
	}
}

// TestPolicyFragmentedSettings: Settings sent in fragments is read whole by
// the policy and reaches Deepgram as one message, with the policy applied.
func TestPolicyFragmentedSettings(t *testing.T) {
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}},"allow":["agent.think.prompt"],"on_violation":"strip"}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	c := h.rawDial("")
	settings := `{"type":"Settings","agent":{"think":{"provider":{"model":"mine"},"prompt":"be brief"}}}`
	c.trickle(clientFrame(0x01, []byte(settings[:20])))
	c.trickle(clientFrame(0x89, []byte("ping")))
	c.trickle(clientFrame(0x80, []byte(settings[20:])))
	for {
		op, p := c.read()
		if op == opText && strings.Contains(string(p), "SettingsApplied") {
			break
		}
	}
	var got string
	for _, txt := range h.fake.Texts() {
		if strings.Contains(string(txt), `"Settings"`) {
			got = string(txt)
		}
	}
	if !strings.Contains(got, `"model":"pinned"`) || !strings.Contains(got, `"prompt":"be brief"`) || strings.Contains(got, "mine") {
		t.Fatalf("Deepgram got %s", got)
	}
}

// TestTextBudget: text messages the policy reads whole count against the
// instance's text budget while they are being read. A message that would
// pass it ends its session with 1013 (try again); once a message is through,
// its bytes are free again.
func TestTextBudget(t *testing.T) {
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}}}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	h.relay.texts.limit = 1000
	// inject is a client message of n bytes the policy passes.
	inject := func(n int) []byte {
		return []byte(`{"type":"InjectUserMessage","content":"` + strings.Repeat("a", n-41) + `"}`)
	}
	msg := inject(700)
	first := h.rawDial("")
	first.send(clientFrame(0x01, msg[:600])) // held, not final
	waitFor(t, func() bool { return h.relay.texts.used.Load() == 600 })

	second := h.rawDial("")
	second.send(clientFrame(0x01, bytes.Repeat([]byte("b"), 600)))
	second.expectRelayError("RELAY_BUSY")
	if reason := second.expectClose(websocket.StatusTryAgainLater); reason != "relay busy, try again" {
		t.Fatalf("reason %q", reason)
	}
	second.send(clientFrame(0x88, closePayload(websocket.StatusTryAgainLater, "")))
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client message refused: relay busy" {
		t.Fatalf("upstream got %+v", got)
	}

	first.send(clientFrame(0x80, msg[600:])) // the end
	if op, p := first.read(); op != opText || len(p) != 700 {
		t.Fatalf("echo: opcode %x, %d bytes", op, len(p))
	}
	waitFor(t, func() bool { return h.relay.texts.used.Load() == 0 })
	// 450 up, then its 450 echo down: both fit only once the first is free.
	first.send(clientFrame(0x81, inject(450)))
	if op, p := first.read(); op != opText || len(p) != 450 {
		t.Fatalf("echo after the budget freed: opcode %x, %d bytes", op, len(p))
	}
	waitForLog(t, h.logs, `"cause":"text_budget"`)
}

// TestUpstreamThroughProxy: with HTTPS_PROXY set, the upstream is reached
// through the proxy's CONNECT tunnel, with its credentials, and the session
// relays as usual.
func TestUpstreamThroughProxy(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	proxy := startConnectProxy(t)
	tr := newUpgradeTransport()
	proxyURL := &url.URL{Scheme: "http", Host: proxy.addr, User: url.UserPassword("relay", "s3cret")}
	tr.proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	slot := new(handoffSlot)
	ctx := t.Context()
	c, _, err := websocket.Dial(withHandoffSlot(ctx, slot), fake.URL+"/v1/agent/converse", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, msg, err := c.Read(ctx); err != nil || !strings.Contains(string(msg), "Welcome") {
		t.Fatalf("through the proxy: %q %v", msg, err)
	}
	if slot.conn == nil {
		t.Fatal("the upgraded connection was not handed over")
	}
	target, auth := proxy.seen()
	if target != strings.TrimPrefix(fake.URL, "ws://") || auth != "Basic cmVsYXk6czNjcmV0" {
		t.Fatalf("proxy saw CONNECT %q with %q", target, auth)
	}

	// A malformed HTTPS_PROXY is reported without its value, which holds
	// the proxy's password.
	tr.proxy = func(*http.Request) (*url.URL, error) {
		// What http.ProxyFromEnvironment says of a value it cannot parse.
		return nil, fmt.Errorf("invalid proxy address %q: %w", "http://relay:s3cret@proxy:bad port", errors.New("invalid port"))
	}
	_, _, err = websocket.Dial(ctx, fake.URL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("malformed proxy: %v", err)
	}
	tr.proxy = func(*http.Request) (*url.URL, error) { return &url.URL{Scheme: "socks5", Host: proxy.addr}, nil }
	if _, _, err = websocket.Dial(ctx, fake.URL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}); err == nil || !strings.Contains(err.Error(), "socks5") {
		t.Fatalf("socks5 proxy: %v", err)
	}
}

// connectProxy is an HTTP proxy that speaks only CONNECT.
type connectProxy struct {
	addr         string
	mu           sync.Mutex
	target, auth string
}

func (p *connectProxy) seen() (string, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target, p.auth
}

func startConnectProxy(t *testing.T) *connectProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				p.mu.Lock()
				p.target, p.auth = req.Host, req.Header.Get("Proxy-Authorization")
				p.mu.Unlock()
				up, err := net.Dial("tcp", req.Host)
				if err != nil {
					_, _ = io.WriteString(conn, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				_, _ = io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
				done := make(chan struct{})
				go func() { _, _ = io.Copy(up, conn); up.Close(); close(done) }()
				_, _ = io.Copy(conn, up)
				conn.Close()
				<-done
			}()
		}
	}()
	return p
}

// TestGatheredTextDroppedOnClose: a text message the scrub is gathering when
// the session ends is not sent after the client's close frame.
func TestGatheredTextDroppedOnClose(t *testing.T) {
	client, upstream := &recordingConn{}, &recordingConn{}
	s := &session{
		relay:    pipeRelay(nil),
		userText: new(atomic.Int64),
		client:   &peer{conn: client, side: sideClient},
		upstream: &peer{conn: upstream, side: sideUpstream},
	}
	scrub := func(msg []byte) policyVerdict { return policyVerdict{out: msg} }
	p := &pipe{s: s, src: s.upstream, dst: s.client, flow: &s.down, maxMsg: 1 << 20, text: scrub}
	server := func(first byte, payload string) []byte {
		b := appendFrame(nil, first&0x0f, []byte(payload), false)
		b[0] = first
		return b
	}
	p.consume(server(0x01, `{"type":"Conversation`)) // text, not final
	s.end(restartOutcome)
	p.consume(server(0x80, `Text"}`))
	p.consume(server(0x88, string(closePayload(1000, ""))))

	got := client.out.Bytes()
	want := appendFrame(nil, opClose, closePayload(websocket.StatusServiceRestart, "service restart"), false)
	if !bytes.Equal(got, want) {
		t.Fatalf("client was sent %q, want only the 1012 close %q", got, want)
	}
	if held := s.relay.texts.used.Load(); held != 0 {
		t.Errorf("%d bytes still counted in the text budget", held)
	}
}

// captureConn passes a TLS server's handshake through to its socket, then
// keeps what the server writes, so that a test can deliver its records cut
// anywhere.
type captureConn struct {
	net.Conn
	mu       sync.Mutex
	capture  bool
	captured []byte
}

func (c *captureConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.capture {
		c.captured = append(c.captured, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *captureConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.captured
	c.captured = nil
	return b
}

// tlsRig is a session whose upstream is TLS over loopback: the test writes
// Deepgram's records into deepgram as it likes and reads the client's end.
type tlsRig struct {
	server   *tls.Conn // Deepgram's TLS end, writing into capture
	capture  *captureConn
	deepgram net.Conn  // Deepgram's socket, where the test delivers records
	upstream *tls.Conn // the relay's TLS end
	out      net.Conn  // the browser's socket
	s        *session
	done     chan struct{}
}

func newTLSRig(t testing.TB, cert tls.Certificate) *tlsRig {
	r := &tlsRig{}
	var clientSide, upTCP net.Conn
	r.out, clientSide = loopbackPair(t)
	upTCP, r.deepgram = loopbackPair(t)
	r.capture = &captureConn{Conn: r.deepgram}
	r.server = tls.Server(r.capture, &tls.Config{Certificates: []tls.Certificate{cert}})
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	r.upstream = tls.Client(newTLSSocket(upTCP), &tls.Config{RootCAs: roots, ServerName: "deepgram.test"})
	handshook := make(chan error, 1)
	go func() { handshook <- r.server.Handshake() }()
	if err := r.upstream.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-handshook; err != nil {
		t.Fatal(err)
	}
	r.capture.mu.Lock()
	r.capture.capture = true
	r.capture.mu.Unlock()
	r.s = &session{
		relay:    pipeRelay(nil),
		userText: new(atomic.Int64),
		client:   newPeer(&handoffConn{Conn: clientSide}, sideClient),
		upstream: newPeer(&handoffConn{Conn: r.upstream}, sideUpstream),
	}
	if r.s.upstream.tls == nil {
		t.Fatal("the TLS upstream is not read through its socket")
	}
	t.Cleanup(func() {
		r.out.Close()
		r.deepgram.Close()
		if r.done != nil {
			<-r.done
		} else {
			clientSide.Close()
			upTCP.Close()
		}
	})
	return r
}

// records is the TLS records Deepgram's end makes of frame.
func (r *tlsRig) records(t *testing.T, frame []byte) []byte {
	if _, err := r.server.Write(frame); err != nil {
		t.Fatal(err)
	}
	return r.capture.take()
}

// deliver writes records to the relay's socket.
func (r *tlsRig) deliver(t *testing.T, records ...[]byte) {
	if _, err := r.deepgram.Write(bytes.Join(records, nil)); err != nil {
		t.Fatal(err)
	}
}

// readBefore reads frame through the relay's TLS end before the session
// starts, as the handshake's 101 is read.
func (r *tlsRig) readBefore(t *testing.T, frame []byte) {
	got := make([]byte, len(frame))
	if _, err := io.ReadFull(r.upstream, got); err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("read before the session %q %v", got, err)
	}
}

func (r *tlsRig) start() {
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.s.run()
	}()
}

// expect reads want from the client's socket.
func (r *tlsRig) expect(t *testing.T, want []byte) {
	_ = r.out.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(r.out, got); err != nil {
		t.Fatalf("the client got %d of %d bytes: %v", n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the client got the frames changed")
	}
}

// TestTLSRecordsSplitAnywhere: Deepgram's TLS records reach the relay cut at
// any byte, several to a read and a frame over many records, after a read
// made before the session began (as the 101 is read) that ended inside a
// record; every frame reaches the client whole and in order.
func TestTLSRecordsSplitAnywhere(t *testing.T) {
	cert := selfSigned(t)
	for seed := range 6 {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(seed)))
			r := newTLSRig(t, cert)
			first := appendFrame(nil, opText, []byte(`{"type":"Welcome"}`), false)
			firstRecord := r.records(t, first)
			var want, rest []byte
			for range 12 {
				size := []int{0, 1, 125, 126, 1920, 16379, 16384, 40000}[rng.Intn(8)]
				op := []byte{opBinary, opText}[rng.Intn(2)]
				frame := appendFrame(nil, op, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, size), false)
				want = append(want, frame...)
				rest = append(rest, r.records(t, frame)...)
			}
			r.deliver(t, firstRecord, rest[:3])
			rest = rest[3:]
			r.readBefore(t, first)
			r.start()
			delivered := make(chan error, 1)
			go func() {
				for len(rest) > 0 {
					k := min(len(rest), 1+rng.Intn(4000))
					if _, err := r.deepgram.Write(rest[:k]); err != nil {
						delivered <- err
						return
					}
					rest = rest[k:]
					if rng.Intn(3) == 0 {
						time.Sleep(time.Duration(rng.Intn(300)) * time.Microsecond)
					}
				}
				delivered <- nil
			}()
			r.expect(t, want)
			if err := <-delivered; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTLSRecordsLeftFromBefore: a record left whole in crypto/tls by the read
// before the session, then two records in the session's first read: all
// three reach the client, though nothing follows them.
func TestTLSRecordsLeftFromBefore(t *testing.T) {
	r := newTLSRig(t, selfSigned(t))
	first := appendFrame(nil, opText, []byte(`{"type":"Welcome"}`), false)
	a, b, c := appendFrame(nil, opBinary, []byte("A"), false), appendFrame(nil, opBinary, []byte("BB"), false), appendFrame(nil, opBinary, []byte("CCC"), false)
	recFirst, recA, recB, recC := r.records(t, first), r.records(t, a), r.records(t, b), r.records(t, c)
	r.deliver(t, recFirst, recA, recB[:3])
	r.readBefore(t, first) // A stays whole in crypto/tls, B begun
	r.deliver(t, recB[3:], recC)
	time.Sleep(20 * time.Millisecond) // both in the socket before the session's first read
	r.start()
	r.expect(t, bytes.Join([][]byte{a, b, c}, nil))
}
