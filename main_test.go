package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

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

// settled waits until the relay holds no session: Deepgram seeing its close
// comes a moment before the relay lets the session go.
func (h *harness) settled() {
	h.t.Helper()
	waitFor(h.t, func() bool { return h.relay.sessions.active() == 0 })
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
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

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
