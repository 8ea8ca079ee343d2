package main

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// TestTextBudgetUserShare: one identity holds at most its share of the text
// budget (a whole message each way) however many sessions it opens; the
// session that would pass it gets RELAY_BUSY and 1013, and another user is
// not affected.
func TestTextBudgetUserShare(t *testing.T) {
	// The test reads a text message's relayed length from its echo: the
	// policy lets the fake's Fake.Echo control through.
	policy := echoPolicy
	h := newHarness(t, authEnv(map[string]string{"SETTINGS_POLICY": policy, "MAX_MESSAGE_BYTES": "1000"}), fakedeepgram.Options{})
	poolsOnly(h)
	alice, bob := userToken(t, "alice"), userToken(t, "bob")
	unfinished := clientFrame(0x01, bytes.Repeat([]byte("a"), 900)) // text, FIN=0
	a1, a2 := h.rawDial("token="+alice), h.rawDial("token="+alice)
	a1.send(unfinished)
	a2.send(unfinished)
	waitFor(t, func() bool { return h.relay.texts.held() == 1800 })

	a3 := h.rawDial("token=" + alice)
	a3.send(unfinished) // 2,700 > alice's 2,000
	a3.expectRelayError("RELAY_BUSY")
	a3.expectClose(websocket.StatusTryAgainLater)

	b := h.rawDial("token=" + bob)
	msg := []byte(`{"content":"` + strings.Repeat("b", 867) + `","type":"Fake.Echo"}`)
	b.send(clientFrame(0x81, msg))
	if op, p := b.read(); op != wspipe.OpText || len(p) != len(msg) {
		t.Fatalf("bob's echo: opcode %x, %d bytes", op, len(p))
	}
}

// TestTextBudgetBusyDownstream: a Deepgram text message that would pass
// Deepgram's pool tells the client to try again (RELAY_BUSY, 1013), not
// 1000, which the React component takes for a normal end.
func TestTextBudgetBusyDownstream(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	poolsOnly(h)
	h.relay.texts.upstream.limit = 1000
	holder := h.rawDial("")
	unfinished := hex.EncodeToString(append([]byte{0x01, 126, 600 >> 8, 600 & 0xff}, bytes.Repeat([]byte("a"), 600)...))
	holder.send(clientFrame(0x81, []byte(`{"type":"Fake.Raw","hex":"`+unfinished+`"}`))) // Deepgram holds 600
	waitFor(t, func() bool { return h.relay.texts.upstream.used.Load() == 600 })
	c := h.rawDial("")
	c.send(clientFrame(0x81, []byte(`{"type":"Fake.Send","bytes":700}`)))
	c.expectRelayError("RELAY_BUSY")
	c.expectClose(websocket.StatusTryAgainLater)
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "upstream message refused: relay busy" {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestTextBudgetDeepgramReserve: clients holding every byte of their pool do
// not keep Deepgram's events from anyone: a new session still reads its
// Welcome, which the scrub reads whole.
func TestTextBudgetDeepgramReserve(t *testing.T) {
	policy := pinnedPolicy
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	poolsOnly(h)
	h.relay.texts.client.limit = 600
	holder := h.rawDial("")
	holder.send(clientFrame(0x01, bytes.Repeat([]byte("a"), 600))) // the clients' pool, full
	waitFor(t, func() bool { return h.relay.texts.client.used.Load() == 600 })
	h.rawDial("") // reads its Welcome, or fails
}

// TestTextBudgetChargesBytesHeld: a header that declares a megabyte holds
// nothing until the bytes come, so it cannot fill the budget by itself.
func TestTextBudgetChargesBytesHeld(t *testing.T) {
	policy := pinnedPolicy
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	poolsOnly(h)
	c := h.rawDial("")
	header := clientFrame(0x01, make([]byte, 1<<20))[:14] // 1 MiB declared, masked
	c.send(append(header, make([]byte, 10)...))
	waitFor(t, func() bool { return h.relay.texts.held() == 10 })
}

// TestTextGatherTimeout: a text message the relay reads whole and the client
// leaves unfinished ends its session (1008) once textGatherTimeout passes,
// and its bytes go back to the budget.
func TestTextGatherTimeout(t *testing.T) {
	defer func(d time.Duration) { textGatherTimeout = d }(textGatherTimeout)
	textGatherTimeout = 200 * time.Millisecond
	policy := pinnedPolicy
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
	if held := h.relay.texts.held(); held != 0 {
		t.Fatalf("%d bytes still held", held)
	}
}

// TestTextBudget: text messages the policy reads whole count against the
// instance's text budget while they are being read. A message that would
// pass it ends its session with 1013 (try again); once a message is through,
// its bytes are free again.
func TestTextBudget(t *testing.T) {
	// Echoes give the relayed lengths, as in TestTextBudgetUserShare.
	policy := echoPolicy
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	poolsOnly(h)
	h.relay.texts.client.limit = 1000
	// inject is a client message of n bytes the policy passes.
	inject := func(n int) []byte {
		return []byte(`{"content":"` + strings.Repeat("a", n-33) + `","type":"Fake.Echo"}`)
	}
	msg := inject(700)
	first := h.rawDial("")
	first.send(clientFrame(0x01, msg[:600])) // held, not final
	waitFor(t, func() bool { return h.relay.texts.held() == 600 })

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
	waitFor(t, func() bool { return h.relay.texts.held() == 0 })
	first.send(clientFrame(0x81, inject(900)))
	if op, p := first.read(); op != wspipe.OpText || len(p) != 900 {
		t.Fatalf("echo after the budget freed: opcode %x, %d bytes", op, len(p))
	}
	waitForLog(t, h.logs, `"cause":"text_budget"`)
}

// held is what both pools of the text budget hold.
func (b *textBudget) held() int64 { return b.client.used.Load() + b.upstream.used.Load() }

// echoPolicy pins one value and lets the fake's Fake.Echo control pass, for
// tests that read what the relay sent on from its echo.
const echoPolicy = `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}},"messages":["Fake.Echo"]}`

// poolsOnly makes h's text budget the shared pools alone, for tests of the
// pools with small messages: no session reserve, and a short wait for room.
func poolsOnly(h *harness) {
	h.relay.texts.reserve = 0
	h.relay.texts.waitFor.Store(int64(100 * time.Millisecond))
}
