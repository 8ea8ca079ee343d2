package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

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

func TestPerUserSessionCap(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"MAX_SESSIONS_PER_USER": "2"}), fakedeepgram.Options{})
	alice, bob := userToken(t, "alice"), userToken(t, "bob")
	a1, a2 := h.dial("token="+alice), h.dial("token="+alice)
	expectType(t, a1, "Welcome")
	expectType(t, a2, "Welcome")
	expectRefused(t, h, "token="+alice, nil, 4429, "too many sessions")

	b := h.dial("token=" + bob) // another user is not affected
	expectType(t, b, "Welcome")

	a1.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
	waitFor(t, func() bool { return h.relay.sessions.active() == 2 })
	a3 := h.dial("token=" + alice) // a freed slot is usable again
	expectType(t, a3, "Welcome")
}

func TestSessionRatePerUser(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"SESSION_RATE_PER_MINUTE": "3", "MAX_SESSIONS_PER_USER": "0"}), fakedeepgram.Options{})
	tok := userToken(t, "carol")
	for i := 0; i < 3; i++ {
		c := h.dial("token=" + tok)
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	}
	expectRefused(t, h, "token="+tok, nil, 4429, "too many new sessions")
	c := h.dial("token=" + userToken(t, "dave"))
	expectType(t, c, "Welcome")
}

// TestUnauthenticatedLimitsByIP: without tokens, the client address is the
// identity the per-user limits count.
func TestUnauthenticatedLimitsByIP(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_SESSIONS_PER_USER": "1"}, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	expectRefused(t, h, "", nil, 4429, "too many sessions")
}

func TestInstanceFull(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_SESSIONS": "2", "MAX_SESSIONS_PER_USER": "0"}, fakedeepgram.Options{})
	for i := 0; i < 2; i++ {
		expectType(t, h.dial(""), "Welcome")
	}
	expectRefused(t, h, "", nil, websocket.StatusTryAgainLater, "relay full, try again")
	if !strings.Contains(h.logs.String(), `"refusal":"instance_full"`) {
		t.Error("the refusal is not logged")
	}
}

func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, map[string]string{"IDLE_TIMEOUT": "400ms"}, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	// KeepAlives, as the React component sends them, keep the session up
	// well past the idle timeout.
	for i := 0; i < 8; i++ {
		write(t, c, websocket.MessageText, []byte(`{"type":"KeepAlive"}`))
		time.Sleep(100 * time.Millisecond)
	}
	if h.relay.sessions.active() != 1 {
		t.Fatal("a session with KeepAlives was ended")
	}
	if ce := expectClose(t, c, websocket.StatusPolicyViolation); ce.Reason != "idle timeout" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure {
		t.Fatalf("upstream got %+v", got)
	}
}

func TestSessionDurationLimit(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_SESSION_DURATION": "500ms"}, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	go func() {
		for i := 0; i < 50; i++ {
			if c.Write(context.Background(), websocket.MessageBinary, make([]byte, 640)) != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if ce := expectClose(t, c, websocket.StatusPolicyViolation); ce.Reason != "session time limit reached" {
		t.Fatalf("reason %q", ce.Reason)
	}
	h.upstreamClosed()
}

// TestClientThatStopsReading: Deepgram streams audio to a client that never
// reads. Back-pressure holds the upstream (the relay reads from it only as
// fast as the client takes), the relay's memory stays flat, and once a write
// has been stuck for WRITE_TIMEOUT the session ends.
func TestClientThatStopsReading(t *testing.T) {
	h := newHarness(t, map[string]string{"WRITE_TIMEOUT": "500ms", "IDLE_TIMEOUT": "0"}, fakedeepgram.Options{})
	c := h.dial("")
	const frame, frames = 64 << 10, 4000 // 256 MiB offered
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	write(t, c, websocket.MessageText, []byte(fmt.Sprintf(`{"type":"Fake.Stream","bytes":%d,"count":%d}`, frame, frames)))

	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client not reading" {
		t.Fatalf("upstream got %+v, want 1000 client not reading", got)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// A client that comes back to reading finds the relayed audio, then
	// the close that says why the session ended.
	if ce := expectClose(t, c, websocket.StatusPolicyViolation); ce.Reason != "client not reading" {
		t.Fatalf("reason %q", ce.Reason)
	}
	waitForLog(t, h.logs, `"message":"session end"`)
	end := sessionEnd(t, h.logs.String())
	if end["cause"] != "slow_client" || end["client_close"] != float64(websocket.StatusPolicyViolation) {
		t.Fatalf("session end: %v", end)
	}
	relayed := end["down_bytes"].(float64)
	if relayed > frame*frames/4 {
		t.Errorf("the relay took %.0f of %d bytes from upstream for a client that reads nothing", relayed, frame*frames)
	}
	// Whatever the relay forwarded sits in kernel socket buffers, not in
	// the heap: its growth stays far below what was streamed.
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
		t.Errorf("heap grew %d MiB while a non-reading client was streamed to", grew>>20)
	}
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

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUserLimitsForget(t *testing.T) {
	ul := newUserLimits(5, 60)
	now := time.Now()
	ul.acquire("a", now)
	ul.acquire("b", now)
	ul.release("a")
	ul.forget(now.Add(2 * time.Minute))
	if ul.size() != 1 {
		t.Fatalf("%d identities tracked, want only the one with a live session", ul.size())
	}
}

// TestSlowHandshake: a client that trickles its headers is cut off by the
// server's ReadHeaderTimeout, before any of the relay's code runs.
func TestSlowHandshake(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	if srv := h.relay.httpServer(); srv.ReadHeaderTimeout != readHeaderTimeout || srv.MaxHeaderBytes != maxHeaderBytes {
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

// size is how many identities are tracked.
func (ul *userLimits) size() int {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	return len(ul.users)
}
