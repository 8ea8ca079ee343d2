package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

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

// TestIdleKeepAliveClosed: a keep-alive connection that sent one request and
// then nothing is closed after httpIdleTimeout, on the public port and the
// metrics port, instead of holding a descriptor and a goroutine for ever.
func TestIdleKeepAliveClosed(t *testing.T) {
	const idle = 300 * time.Millisecond
	shorten(t, &httpIdleTimeout, idle)
	h := newHarness(t, nil, fakedeepgram.Options{})
	for _, tc := range []struct{ name, addr, path string }{
		{"public", h.srv.Listener.Addr().String(), "/healthz"},
		{"metrics", serveMetrics(t, h), "/metrics"},
	} {
		conn, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
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
	for _, tc := range []struct{ name, addr, path string }{
		{"public", h.srv.Listener.Addr().String(), "/healthz"},
		{"metrics", serveMetrics(t, h), "/metrics"},
	} {
		conn, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
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
	write(t, c, websocket.MessageText, []byte("still here"))
	if typ, data := read(t, c); typ != websocket.MessageText || string(data) != "still here" {
		t.Fatalf("echo: %v %q", typ, data)
	}
	c.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
}
