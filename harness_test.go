package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/testredis"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
	"github.com/sethvargo/go-envconfig"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testAPIKey is the key every harness gives the relay. Tests look for it in
// everything a client or a log line could see.
const testAPIKey = "dg-secret-KEY-0123456789abcdef"

// lockedBuffer collects log lines from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is the real relay on a real loopback listener between the test's
// WebSocket clients and a fake Deepgram.
type harness struct {
	t     *testing.T
	fake  *fakedeepgram.Server
	relay *relay
	srv   *httptest.Server
	logs  *lockedBuffer
	// wsURL is the relay's WebSocket route.
	wsURL string
}

// newHarness starts a fake upstream and a relay configured from env (on top
// of the key and the fake's URLs). Cleanup drains the relay, stops both and
// checks that no log line holds the key.
func newHarness(t *testing.T, env map[string]string, fakeOpts fakedeepgram.Options) *harness {
	t.Helper()
	fake := fakedeepgram.Start(fakeOpts)
	vars := map[string]string{
		"DEEPGRAM_API_KEY":    testAPIKey,
		"DEEPGRAM_AGENT_URL":  fake.URL + "/v1/agent/converse",
		"DEEPGRAM_LISTEN_URL": fake.URL + "/v1/listen",
		"LOG_LEVEL":           "debug",
		// The core tests run without user tokens; auth_test.go sets them.
		"ALLOW_UNAUTHENTICATED": "true",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(vars))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &lockedBuffer{}
	level, _ := parseLogLevel(cfg.LogLevel)
	secrets := &secretReader{emulatorHost: cfg.SecretManagerEmulatorHost}
	defer secrets.close()
	policy, err := loadPolicy(context.Background(), cfg.SettingsPolicy, envconfig.MapLookuper(vars), secrets)
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	rl, err := newRelay(cfg, testAPIKey, policy, newLogger(logs, level))
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = rl.httpServer()
	srv.Start()
	h := &harness{t: t, fake: fake, relay: rl, srv: srv, logs: logs,
		wsURL: "ws" + strings.TrimPrefix(srv.URL, "http") + cfg.ProxyPath}
	t.Cleanup(func() {
		rl.drain(0)
		rl.close()
		srv.Close()
		fake.Close()
		if strings.Contains(logs.String(), testAPIKey) {
			t.Errorf("the API key appears in the logs:\n%s", logs.String())
		}
	})
	return h
}

// dial opens a client session through the relay with the given query.
func (h *harness) dial(query string) *websocket.Conn {
	h.t.Helper()
	c, err := h.tryDial(query, nil)
	if err != nil {
		h.t.Fatalf("dial relay: %v", err)
	}
	return c
}

func (h *harness) tryDial(query string, opts *websocket.DialOptions) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	u := h.wsURL
	if query != "" {
		u += "?" + query
	}
	c, _, err := websocket.Dial(ctx, u, opts)
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(64 << 20)
	h.t.Cleanup(func() { c.CloseNow() })
	return c, nil
}

// minimalSettings is the least Settings Deepgram accepts (its AsyncAPI spec:
// audio and agent are required), for tests about the relay, not Settings.
const minimalSettings = `{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}},"agent":{}}`

// agentSession opens an agent session through the relay as a client must
// (the fake is Deepgram, strict): it dials, sends minimalSettings, and reads
// Welcome and SettingsApplied. Audio and other messages may follow.
func (h *harness) agentSession(query string) *websocket.Conn {
	h.t.Helper()
	c := h.dial(query)
	applySettings(h.t, c)
	return c
}

// applySettings sends minimalSettings on a fresh agent session and reads
// Welcome and SettingsApplied.
func applySettings(t *testing.T, c *websocket.Conn) {
	t.Helper()
	write(t, c, websocket.MessageText, []byte(minimalSettings))
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
}

// read reads one message within a bound, failing the test on error.
func read(t *testing.T, c *websocket.Conn) (websocket.MessageType, []byte) {
	t.Helper()
	typ, data, err := readErr(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, data
}

func readErr(c *websocket.Conn) (websocket.MessageType, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return c.Read(ctx)
}

func write(t *testing.T, c *websocket.Conn, typ websocket.MessageType, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, data); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// expectType reads one text message and checks its JSON type.
func expectType(t *testing.T, c *websocket.Conn, want string) map[string]any {
	t.Helper()
	typ, data := read(t, c)
	var m map[string]any
	if typ != websocket.MessageText || json.Unmarshal(data, &m) != nil || m["type"] != want {
		t.Fatalf("want a %s text message, got %v %q", want, typ, data)
	}
	return m
}

// expectClose reads until the connection closes and checks the close code.
func expectClose(t *testing.T, c *websocket.Conn, code websocket.StatusCode) websocket.CloseError {
	t.Helper()
	for {
		_, _, err := readErr(c)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("want close %d, got %v", code, err)
		}
		if ce.Code != code {
			t.Fatalf("want close %d, got %d %q", code, ce.Code, ce.Reason)
		}
		return ce
	}
}

// settled waits until the relay holds no session, and their leases have
// ended in Redis: Deepgram seeing its close comes a moment before the relay
// lets the session go.
func (h *harness) settled() {
	h.t.Helper()
	waitFor(h.t, func() bool { return h.relay.sessions.active() == 0 && !h.relay.redisAfter.busy() })
}

// upstreamClosed waits for the fake to report its session's end.
func (h *harness) upstreamClosed() fakedeepgram.Closed {
	h.t.Helper()
	select {
	case c := <-h.fake.Closed():
		return c
	case <-time.After(15 * time.Second):
		h.t.Fatal("the upstream session did not end")
	}
	return fakedeepgram.Closed{}
}

func get(t *testing.T, url string, header http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) string { return testredis.FreePort(t) }

// waitForLog waits until the logs hold want.
func waitForLog(t *testing.T, logs interface{ String() string }, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s", want, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scrape returns the Prometheus text at url.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

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

func authEnv(extra map[string]string) map[string]string {
	env := map[string]string{"ALLOW_UNAUTHENTICATED": "false", "JWT_SECRET": testJWTSecret}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

func userToken(t *testing.T, sub string) string {
	return hs256(t, testJWTSecret, claims{sub: sub, exp: time.Hour})
}

// sessionEnd returns the fields of the last "session end" log line.
func sessionEnd(t *testing.T, logs string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var m map[string]any
		if json.Unmarshal([]byte(lines[i]), &m) == nil && m["message"] == "session end" {
			return m
		}
	}
	t.Fatalf("no session end line:\n%s", logs)
	return nil
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// grepLines is the lines of s that hold sub.
func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// trust makes h's relay verify the fake's certificate.
func trust(h *harness, fake *fakedeepgram.Server) {
	pool := x509.NewCertPool()
	pool.AddCert(fake.Certificate())
	h.relay.dialOpts.HTTPClient.Transport.(*upgradeTransport).tlsConfig.RootCAs = pool
}

// expectRelayError reads frames until an Error text frame and checks its code.
func (c *rawClient) expectRelayError(code string) {
	c.t.Helper()
	for {
		op, p := c.read()
		if op == wspipe.OpClose {
			c.t.Fatalf("closed (%x) before an Error frame %s", p, code)
		}
		var m map[string]any
		if op == wspipe.OpText && json.Unmarshal(p, &m) == nil && m["type"] == "Error" {
			if m["code"] != code {
				c.t.Fatalf("Error frame %s, want %s", p, code)
			}
			return
		}
	}
}

// scrapeHandler is the harness relay's /metrics page.
func scrapeHandler(t *testing.T, h *harness) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.relay.metrics.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// pinnedPolicy is a Settings policy that pins one value and allows the rest:
// for tests that need a policy in force (client text read whole), not its
// rules.
const pinnedPolicy = `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}}}`
