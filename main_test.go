package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// builtBinary compiles dgrelay once per test run, as the Dockerfile does.
func builtBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dgrelay-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "dgrelay")
		out, err := exec.Command("go", "build", "-trimpath", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binPath
}

// process is the built relay running as a subprocess.
type process struct {
	cmd     *exec.Cmd
	logs    *lockedBuffer
	base    string // http://127.0.0.1:PORT
	metrics string // the metrics URL
	exit    chan int
}

func startProcess(t *testing.T, fake *fakedeepgram.Server, env ...string) *process {
	t.Helper()
	port, metricsPort := freePort(t), freePort(t)
	cmd := exec.Command(builtBinary(t))
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"PORT=" + port,
		"METRICS_PORT=" + metricsPort,
		"DEEPGRAM_API_KEY=" + testAPIKey,
		"DEEPGRAM_AGENT_URL=" + fake.URL + "/v1/agent/converse",
		"ALLOW_UNAUTHENTICATED=true",
	}, env...)
	p := &process{cmd: cmd, logs: &lockedBuffer{}, base: "http://127.0.0.1:" + port,
		metrics: "http://127.0.0.1:" + metricsPort + "/metrics", exit: make(chan int, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		p.exit <- cmd.ProcessState.ExitCode()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exit
	})
	waitForLog(t, p.logs, "dgrelay started")
	return p
}

func (p *process) dial(t *testing.T) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+p.base[len("http"):]+"/ws/deepgram-proxy/?service=agent", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	expectType(t, c, "Welcome")
	return c
}

func (p *process) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case code := <-p.exit:
		p.exit <- code // for Cleanup
		return code
	case <-time.After(within):
		t.Fatalf("the relay did not exit within %s:\n%s", within, p.logs.String())
	}
	return -1
}

// TestDrainOnSIGTERM runs the built binary: after SIGTERM a live session
// keeps relaying, a new upgrade gets 503, /readyz turns 503, a straggler gets
// 1012 at the deadline, and the process exits 0.
func TestDrainOnSIGTERM(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{EchoAudio: true})
	defer fake.Close()
	p := startProcess(t, fake, "DRAIN_TIMEOUT=2s")
	finisher := p.dial(t)
	write(t, finisher, websocket.MessageText, []byte(minimalSettings))
	expectType(t, finisher, "SettingsApplied")
	straggler := p.dial(t)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p.logs, "shutdown signal")

	if resp := get(t, p.base+"/readyz", nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the drain: %d", resp.StatusCode)
	}
	if resp := get(t, p.base+"/healthz", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz during the drain: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, resp, err := websocket.Dial(ctx, "ws"+p.base[len("http"):]+"/ws/deepgram-proxy/", nil)
	cancel()
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a new upgrade during the drain: %v %v", resp, err)
	}

	if body := scrape(t, p.metrics); !strings.Contains(body, "dgrelay_draining 1") || !strings.Contains(body, `dgrelay_sessions_active{service="agent"} 2`) {
		t.Errorf("metrics during the drain:\n%s", body)
	}

	// The finisher's call goes on through the drain, then ends by itself.
	for i := 0; i < 3; i++ {
		write(t, finisher, websocket.MessageBinary, []byte{1, 2, 3, byte(i)})
		if typ, data := read(t, finisher); typ != websocket.MessageBinary || len(data) != 4 || data[3] != byte(i) {
			t.Fatalf("relaying during the drain: got %v %v", typ, data)
		}
	}
	finisher.Close(websocket.StatusNormalClosure, "call over")

	if ce := expectClose(t, straggler, websocket.StatusServiceRestart); ce.Reason != "service restart" {
		t.Errorf("straggler reason %q", ce.Reason)
	}
	if code := p.waitExit(t, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, p.logs.String())
	}
	codes := map[websocket.StatusCode]int{}
	for i := 0; i < 2; i++ {
		select {
		case c := <-fake.Closed():
			codes[c.Code]++
		case <-time.After(5 * time.Second):
			t.Fatal("an upstream session did not end")
		}
	}
	if codes[websocket.StatusNormalClosure] != 2 {
		t.Errorf("upstream closes %v, want two normal closes", codes)
	}
}

// TestDrainEndsWhenSessionsDo: with a long DRAIN_TIMEOUT, the process exits
// as soon as its last session ends, not at the deadline.
func TestDrainEndsWhenSessionsDo(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	p := startProcess(t, fake, "DRAIN_TIMEOUT=60s")
	c := p.dial(t)
	_ = p.cmd.Process.Signal(syscall.SIGINT) // Fly's default kill signal
	waitForLog(t, p.logs, "shutdown signal")
	c.Close(websocket.StatusNormalClosure, "")
	if code := p.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestSecondSignalExitsAtOnce: an operator's second Ctrl-C does not wait.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	p := startProcess(t, fake, "DRAIN_TIMEOUT=60s")
	p.dial(t)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	waitForLog(t, p.logs, "shutdown signal")
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(t, 10*time.Second); code == 0 {
		t.Fatalf("exit code 0 after a forced exit")
	}
}

// TestDrainDeadlineDuringDial: the drain deadline passes while a session is
// still dialling Deepgram, whether the dial would end within the drain's
// grace or long after it. Its client must get what the README promises,
// HTTP 503 (it was not accepted yet) or close 1012, never a connection that
// just drops; the refusal is logged; the process exits 0.
func TestDrainDeadlineDuringDial(t *testing.T) {
	for _, delay := range []time.Duration{600 * time.Millisecond, 5 * time.Second} {
		t.Run(delay.String(), func(t *testing.T) {
			fake := fakedeepgram.Start(fakedeepgram.Options{HandshakeDelay: delay})
			defer fake.Close()
			p := startProcess(t, fake, "DRAIN_TIMEOUT=200ms")
			type result struct {
				resp *http.Response
				conn *websocket.Conn
				err  error
			}
			got := make(chan result, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, resp, err := websocket.Dial(ctx, "ws"+p.base[len("http"):]+"/ws/deepgram-proxy/", nil)
				got <- result{resp, c, err}
			}()
			waitFor(t, func() bool { return len(fake.Handshakes()) == 1 })
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			r := <-got
			switch {
			case r.err == nil:
				// Accepted before the deadline: it must then hear 1012.
				expectClose(t, r.conn, websocket.StatusServiceRestart)
			case r.resp == nil || r.resp.StatusCode != http.StatusServiceUnavailable:
				t.Fatalf("the client's handshake: %v %v", r.resp, r.err)
			}
			if code := p.waitExit(t, 10*time.Second); code != 0 {
				t.Fatalf("exit code %d", code)
			}
			if !strings.Contains(p.logs.String(), `"refusal":"draining"`) {
				t.Errorf("no session refused line for the drain:\n%s", p.logs.String())
			}
		})
	}
}

// shorten sets *v to d for the test.
func shorten(t *testing.T, v *time.Duration, d time.Duration) {
	old := *v
	*v = d
	t.Cleanup(func() { *v = old })
}

// closedWithin reads conn until it ends and reports how long after start the
// server closed it; it fails the test if the server keeps it past limit.
func closedWithin(t *testing.T, conn net.Conn, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	_ = conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server still holds the connection after %s", limit)
	}
	return time.Since(start)
}

// serveMetrics serves h's relay's metrics server on a loopback port until
// the test ends, and returns its address.
func serveMetrics(t *testing.T, h *harness) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := h.relay.metricsServer()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// port is one of the relay's two HTTP servers, with a path it serves.
type port struct{ name, addr, path string }

// bothPorts are the harness relay's public and metrics servers.
func bothPorts(t *testing.T, h *harness) []port {
	return []port{{"public", h.srv.Listener.Addr().String(), "/healthz"}, {"metrics", serveMetrics(t, h), "/metrics"}}
}

// dialPort opens a TCP connection to addr, closed when the test ends.
func dialPort(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestIdleKeepAliveClosed: a keep-alive connection that sent one request and
// then nothing is closed after httpIdleTimeout, on the public port and the
// metrics port, instead of holding a descriptor and a goroutine for ever.
func TestIdleKeepAliveClosed(t *testing.T) {
	const idle = 300 * time.Millisecond
	shorten(t, &httpIdleTimeout, idle)
	h := newHarness(t, nil, fakedeepgram.Options{})
	for _, tc := range bothPorts(t, h) {
		conn := dialPort(t, tc.addr)
		if _, err := io.WriteString(conn, "GET "+tc.path+" HTTP/1.1\r\nHost: relay.example\r\nConnection: keep-alive\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("%s: status %d, close %v: want a kept-alive 200", tc.name, resp.StatusCode, resp.Close)
		}
		start := time.Now()
		if took := closedWithin(t, conn, start, 10*time.Second); took < idle/2 {
			t.Errorf("%s: closed after %s, before the idle timeout %s", tc.name, took, idle)
		}
	}
}

// TestSlowRequestCut: a request that is not an upgrade and trickles its body
// (here to a route that does not read it, so net/http drains it) is cut at
// httpReadTimeout instead of holding the connection for ever.
func TestSlowRequestCut(t *testing.T) {
	const limit = 300 * time.Millisecond
	shorten(t, &httpReadTimeout, limit)
	h := newHarness(t, nil, fakedeepgram.Options{})
	for _, tc := range bothPorts(t, h) {
		conn := dialPort(t, tc.addr)
		start := time.Now()
		if _, err := io.WriteString(conn, "POST "+tc.path+" HTTP/1.1\r\nHost: relay.example\r\nContent-Length: 1000\r\n\r\n"+strings.Repeat("x", 10)); err != nil {
			t.Fatal(err)
		}
		closedWithin(t, conn, start, 10*time.Second)
	}
}

// TestUpgradeOutlivesReadTimeout: httpReadTimeout is for plain requests. An
// upgrade whose Deepgram handshake takes longer still opens, and the session
// goes on long after it.
func TestUpgradeOutlivesReadTimeout(t *testing.T) {
	const limit = 200 * time.Millisecond
	shorten(t, &httpReadTimeout, limit)
	h := newHarness(t, nil, fakedeepgram.Options{HandshakeDelay: 3 * limit})
	c := h.dial("service=agent")
	expectType(t, c, "Welcome")
	time.Sleep(3 * limit)
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Echo","text":"still here"}`))
	if typ, data := read(t, c); typ != websocket.MessageText || string(data) != `{"type":"Fake.Echo","text":"still here"}` {
		t.Fatalf("echo: %v %q", typ, data)
	}
	c.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
}

// TestHeaderBytesBound: a request head of maxHeaderBytes (16 KiB, request
// line included) is read; one byte more is answered 431 before any of the
// relay's code runs, on the public port and on the metrics port.
func TestHeaderBytesBound(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	for _, srv := range []*http.Server{h.relay.httpServer(), h.relay.metricsServer()} {
		ts := httptest.NewUnstartedServer(nil)
		ts.Config = srv
		ts.Start()
		for _, size := range []int{maxHeaderBytes, maxHeaderBytes + 1} {
			head := "GET /metrics HTTP/1.1\r\nHost: relay\r\nX-Pad: "
			head += strings.Repeat("p", size-len(head)-len("\r\n\r\n")) + "\r\n\r\n"
			conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Write([]byte(head)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("a %d-byte head: %v", size, err)
			}
			resp.Body.Close()
			conn.Close()
			if tooBig := resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge; tooBig != (size > maxHeaderBytes) {
				t.Errorf("a %d-byte request head: HTTP %d", size, resp.StatusCode)
			}
		}
		ts.Close()
	}
}

// TestSlowHandshake: a client that trickles its headers is cut off by the
// server's ReadHeaderTimeout, before any of the relay's code runs.
func TestSlowHandshake(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	if srv := h.relay.httpServer(); srv.ReadHeaderTimeout != readHeaderTimeout || srv.MaxHeaderBytes != maxHeaderBytes-httpHeaderSlack {
		t.Fatalf("the public server has no handshake bounds")
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = h.relay.httpServer()
	srv.Config.ReadHeaderTimeout = 300 * time.Millisecond // the same bound, shortened for the test
	srv.Start()
	defer srv.Close()
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /ws/deepgram-proxy/ HTTP/1.1\r\nHost: x\r\n")
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if _, err := conn.Write([]byte("X-Slow: 1\r\n")); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the server did not close the slow handshake: %v", err)
	}
	if time.Since(start) >= 5*time.Second {
		t.Fatal("the slow handshake was not cut off")
	}
	if len(h.fake.Handshakes()) != 0 {
		t.Fatal("a slow handshake reached upstream")
	}
}
