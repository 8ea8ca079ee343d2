package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

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

// TestTextBudgetUserShare: one identity holds at most its share of the text
// budget (a whole message each way) however many sessions it opens; the
// session that would pass it gets RELAY_BUSY and 1013, and another user is
// not affected.
func TestTextBudgetUserShare(t *testing.T) {
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}}}`
	h := newHarness(t, authEnv(map[string]string{"SETTINGS_POLICY": policy, "MAX_MESSAGE_BYTES": "1000"}), fakedeepgram.Options{})
	alice, bob := userToken(t, "alice"), userToken(t, "bob")
	unfinished := clientFrame(0x01, bytes.Repeat([]byte("a"), 900)) // text, FIN=0
	a1, a2 := h.rawDial("token="+alice), h.rawDial("token="+alice)
	a1.send(unfinished)
	a2.send(unfinished)
	waitFor(t, func() bool { return h.relay.texts.used.Load() == 1800 })

	a3 := h.rawDial("token=" + alice)
	a3.send(unfinished) // 2,700 > alice's 2,000
	a3.expectRelayError("RELAY_BUSY")
	a3.expectClose(websocket.StatusTryAgainLater)

	b := h.rawDial("token=" + bob)
	msg := []byte(`{"type":"InjectUserMessage","content":"` + strings.Repeat("b", 859) + `"}`)
	b.send(clientFrame(0x81, msg))
	if op, p := b.read(); op != wspipe.OpText || len(p) != len(msg) {
		t.Fatalf("bob's echo: opcode %x, %d bytes", op, len(p))
	}
}

// TestTextBudgetBusyDownstream: a Deepgram text message that would pass the
// budget tells the client to try again (RELAY_BUSY, 1013), not 1000, which
// the React component takes for a normal end.
func TestTextBudgetBusyDownstream(t *testing.T) {
	policy := `{"set":{"agent":{"think":{"endpoint":{"headers":{"x-key":"${env:VOICE_KEY}"}}}}}}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy, "VOICE_KEY": voiceKey}, fakedeepgram.Options{})
	h.relay.texts.limit = 1000
	holder := h.rawDial("")
	holder.send(clientFrame(0x01, bytes.Repeat([]byte("a"), 600))) // unfinished: 600 held
	waitFor(t, func() bool { return h.relay.texts.used.Load() == 600 })
	c := h.rawDial("")
	c.send(clientFrame(0x81, []byte(`{"type":"Fake.Send","bytes":700}`)))
	c.expectRelayError("RELAY_BUSY")
	c.expectClose(websocket.StatusTryAgainLater)
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "upstream message refused: relay busy" {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestTextGatherTimeout: a text message the relay reads whole and the client
// leaves unfinished ends its session (1008) once textGatherTimeout passes,
// and its bytes go back to the budget.
func TestTextGatherTimeout(t *testing.T) {
	defer func(d time.Duration) { textGatherTimeout = d }(textGatherTimeout)
	textGatherTimeout = 200 * time.Millisecond
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}}}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	c := h.rawDial("")
	c.send(clientFrame(0x01, []byte(`{"type":"Settings",`)))
	if reason := c.expectClose(websocket.StatusPolicyViolation); reason != "message not finished in time" {
		t.Fatalf("reason %q", reason)
	}
	c.send(clientFrame(0x88, wspipe.ClosePayload(int(websocket.StatusPolicyViolation), "")))
	if got := h.upstreamClosed(); got.Reason != "client message not finished in time" {
		t.Fatalf("upstream got %+v", got)
	}
	h.settled()
	if held := h.relay.texts.used.Load(); held != 0 {
		t.Fatalf("%d bytes still held", held)
	}
}
