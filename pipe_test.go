package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

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
	if op, p := c.read(); op != wspipe.OpText || !strings.Contains(string(p), "Welcome") {
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
	wspipe.Mask(b[start:], key, 0)
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
	var hdr [wspipe.MaxHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:2]); err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	n := wspipe.HeaderLen(hdr[1])
	if _, err := io.ReadFull(c.br, hdr[2:n]); err != nil {
		c.t.Fatalf("read frame header: %v", err)
	}
	var h wspipe.Header
	if _, err := wspipe.ParseHeader(hdr[:n], &h); err != nil || h.Masked || !h.Fin {
		c.t.Fatalf("frame header %x: %+v %v", hdr[:n], h, err)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read payload: %v", err)
	}
	return h.Opcode, p
}

// expectClose reads frames until a close and checks its code.
func (c *rawClient) expectClose(want websocket.StatusCode) string {
	c.t.Helper()
	for {
		op, p := c.read()
		if op != wspipe.OpClose {
			continue
		}
		code, reason, ok := wspipe.ParseClose(p)
		if !ok || websocket.StatusCode(code) != want {
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
		{wspipe.OpBinary, audio},
		{wspipe.OpPong, []byte("are you there")},
		{wspipe.OpText, []byte(`{"type":"InjectUserMessage","content":"hi"}`)},
		{wspipe.OpBinary, big},
	}
	for _, w := range want {
		op, p := c.read()
		if op != w.op || !bytes.Equal(p, w.payload) {
			t.Fatalf("got opcode %x, %d bytes %.40q; want opcode %x, %d bytes %.40q", op, len(p), p, w.op, len(w.payload), w.payload)
		}
	}
	c.send(clientFrame(0x88, wspipe.ClosePayload(4000, "done")))
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
	for _, first := range []byte{wspipe.OpBinary, wspipe.OpText} {
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
		if op == wspipe.OpText && strings.Contains(string(p), "SettingsApplied") {
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
	second.send(clientFrame(0x88, wspipe.ClosePayload(int(websocket.StatusTryAgainLater), "")))
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client message refused: relay busy" {
		t.Fatalf("upstream got %+v", got)
	}

	first.send(clientFrame(0x80, msg[600:])) // the end
	if op, p := first.read(); op != wspipe.OpText || len(p) != 700 {
		t.Fatalf("echo: opcode %x, %d bytes", op, len(p))
	}
	waitFor(t, func() bool { return h.relay.texts.used.Load() == 0 })
	// 450 up, then its 450 echo down: both fit only once the first is free.
	first.send(clientFrame(0x81, inject(450)))
	if op, p := first.read(); op != wspipe.OpText || len(p) != 450 {
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
