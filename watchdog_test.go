package main

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, map[string]string{"IDLE_TIMEOUT": "400ms"}, fakedeepgram.Options{})
	c := h.agentSession("")
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
	c := h.agentSession("")
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
