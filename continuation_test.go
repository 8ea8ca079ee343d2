package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// shortMoves makes moves asked by the warning quick to come, for one test.
func shortMoves(t *testing.T, quiet, force time.Duration) {
	oldQuiet, oldForce := moveQuiet, moveForceAfter
	moveQuiet, moveForceAfter = quiet, force
	t.Cleanup(func() { moveQuiet, moveForceAfter = oldQuiet, oldForce })
}

// greetedSettings is minimalSettings with a greeting and a client-side
// function.
const greetedSettings = `{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}},` +
	`"agent":{"greeting":"Hello there!","think":{"provider":{"type":"open_ai","model":"m"},"prompt":"be brief",` +
	`"functions":[{"name":"get_time","description":"the time","parameters":{"type":"object","properties":{}}}]}}}`

// startCall opens an agent session with settings and reads Welcome and
// SettingsApplied.
func startCall(t *testing.T, h *harness, settings string) *websocket.Conn {
	t.Helper()
	c := h.dial("")
	write(t, c, websocket.MessageText, []byte(settings))
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	return c
}

// say plays one turn: the user's words, the agent's reply, until its audio
// is done.
func say(t *testing.T, c *websocket.Conn, words string) {
	t.Helper()
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"`+words+`"}`))
	readUntil(t, c, "AgentAudioDone")
}

// untilContinued reads until the relay's SESSION_CONTINUED Warning, failing
// on what a moved call must not show the client: a second Welcome or
// SettingsApplied, Deepgram's length warning or an Error.
func untilContinued(t *testing.T, c *websocket.Conn) {
	t.Helper()
	for {
		typ, data := read(t, c)
		if typ != websocket.MessageText {
			continue
		}
		var m struct{ Type, Code string }
		_ = json.Unmarshal(data, &m)
		switch {
		case m.Type == "Warning" && m.Code == continuedCode:
			return
		case m.Type == "Welcome", m.Type == "SettingsApplied", m.Type == "Error", m.Type == "Warning":
			t.Fatalf("the client read %s during a move", data)
		}
	}
}

// settingsSent are the Settings messages Deepgram received, in order.
func settingsSent(h *harness) []map[string]any {
	var out []map[string]any
	for _, b := range h.fake.Texts() {
		var m map[string]any
		if json.Unmarshal(b, &m) == nil && m["type"] == "Settings" {
			out = append(out, m)
		}
	}
	return out
}

// carried checks the Settings of the move: no greeting, and the turns.
func carried(t *testing.T, h *harness, wantTurns ...string) map[string]any {
	t.Helper()
	all := settingsSent(h)
	if len(all) < 2 {
		t.Fatalf("Deepgram got %d Settings, want one per connection", len(all))
	}
	s := all[len(all)-1]
	agent, _ := s["agent"].(map[string]any)
	if _, ok := agent["greeting"]; ok {
		t.Errorf("the carried Settings has a greeting: the user would hear it mid-call")
	}
	ctx, _ := agent["context"].(map[string]any)
	msgs, _ := ctx["messages"].([]any)
	raw, _ := json.Marshal(msgs)
	for _, w := range wantTurns {
		if !bytes.Contains(raw, []byte(w)) {
			t.Errorf("the carried context lacks %q: %s", w, raw)
		}
	}
	return s
}

// TestMoveOnSessionLengthWarning: Deepgram's two-hour warning moves the call
// at a quiet moment; the client sees no close, no second Welcome, not the
// warning, and the conversation goes on with its turns carried.
func TestMoveOnSessionLengthWarning(t *testing.T) {
	shortMoves(t, 300*time.Millisecond, time.Minute)
	h := newHarness(t, nil, fakedeepgram.Options{MaxSession: 6 * time.Second, SessionWarning: 5 * time.Second})
	c := startCall(t, h, greetedSettings)
	say(t, c, "my name is Ada")
	untilContinued(t, c)
	say(t, c, "what is my name")
	if n := len(h.fake.Handshakes()); n != 2 {
		t.Fatalf("%d connections to Deepgram, want 2", n)
	}
	s := carried(t, h, "my name is Ada", `"role":"assistant"`)
	think := s["agent"].(map[string]any)["think"].(map[string]any)
	if think["prompt"] != "be brief" || think["functions"] == nil {
		t.Errorf("the carried think block changed: %v", think)
	}
	if got := h.upstreamClosed(); got.Code == websocket.StatusNormalClosure {
		t.Logf("old connection ended %+v", got)
	}
	waitForLog(t, h.logs, `"reason":"session_length"`)
	c.Close(websocket.StatusNormalClosure, "")
	h.settled()
	end := sessionEnd(t, h.logs.String())
	if end["moves"] != float64(1) {
		t.Errorf("the end line counts %v moves, want 1", end["moves"])
	}
}

// TestMoveAfterDrop: a Deepgram connection that drops, or closes with 1011,
// 1012 or 1001, is replaced; one that closes 1000 ends the session.
func TestMoveAfterDrop(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	for _, drop := range []string{`{"type":"Fake.Vanish"}`, `{"type":"Fake.Close","code":1011,"reason":"x"}`,
		`{"type":"Fake.Close","code":1012}`, `{"type":"Fake.Close","code":1001}`, `{"type":"Fake.Fail","reason":"INTERNAL_SERVER_ERROR"}`} {
		t.Run(drop, func(t *testing.T) {
			c := startCall(t, h, minimalSettings)
			say(t, c, "before")
			write(t, c, websocket.MessageText, []byte(drop))
			untilContinued(t, c)
			say(t, c, "after")
			carried(t, h, "before")
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
	t.Run("1000 ends it", func(t *testing.T) {
		c := startCall(t, h, minimalSettings)
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":1000}`))
		expectClose(t, c, websocket.StatusNormalClosure)
	})
}

// TestNoMoveBeforeSettingsApplied: before Deepgram applied the Settings there
// is no conversation to carry: a drop ends the session as without moves.
func TestNoMoveBeforeSettingsApplied(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
	m := expectType(t, c, "Error")
	if m["code"] != "UPSTREAM_GONE" {
		t.Fatalf("Error %v, want UPSTREAM_GONE", m)
	}
	expectClose(t, c, websocket.StatusBadGateway)
	if n := len(h.fake.Handshakes()); n != 1 {
		t.Fatalf("%d connections to Deepgram, want 1", n)
	}
}

// TestNoMoveAfterClientError: an Error about the client's own messages ends
// the session with Deepgram's Error passed through.
func TestNoMoveAfterClientError(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := startCall(t, h, minimalSettings)
	write(t, c, websocket.MessageText, []byte(`{"type":"NoSuchMessage"}`))
	m := expectType(t, c, "Error")
	if m["code"] != fakedeepgram.ErrUnparsable {
		t.Fatalf("Error %v, want Deepgram's own", m)
	}
	expectClose(t, c, fakedeepgram.AgentErrorClose)
	if n := len(h.fake.Handshakes()); n != 1 {
		t.Fatalf("%d connections to Deepgram, want 1", n)
	}
}

// TestMoveGivesUp: when Deepgram cannot be reached again, the session ends
// with UPSTREAM_GONE and 1014, and Deepgram's own Error is not passed on
// either (the client could not tell what it meant).
func TestMoveGivesUp(t *testing.T) {
	h := newHarness(t, map[string]string{"UPSTREAM_RETRIES": "0"}, fakedeepgram.Options{})
	c := startCall(t, h, minimalSettings)
	h.fake.SetOptions(fakedeepgram.Options{RejectStatus: 503})
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Fail","reason":"INTERNAL_SERVER_ERROR"}`))
	m := expectType(t, c, "Error")
	if m["code"] != "UPSTREAM_GONE" {
		t.Fatalf("Error %v, want UPSTREAM_GONE", m)
	}
	expectClose(t, c, websocket.StatusBadGateway)
	h.settled()
	if end := sessionEnd(t, h.logs.String()); end["cause"] != "move_failed" {
		t.Fatalf("the end line's cause is %v", end["cause"])
	}
}

// TestMoveUnderPolicy: the carried Settings is the governed one.
func TestMoveUnderPolicy(t *testing.T) {
	shortMoves(t, 300*time.Millisecond, time.Minute)
	policy := `{"set":{"agent":{"think":{"prompt":"pinned prompt"}}},"allow":["audio","agent"],"on_violation":"strip"}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{MaxSession: 6 * time.Second, SessionWarning: 5 * time.Second})
	c := startCall(t, h, greetedSettings)
	say(t, c, "hello")
	untilContinued(t, c)
	s := carried(t, h, "hello")
	if p := s["agent"].(map[string]any)["think"].(map[string]any)["prompt"]; p != "pinned prompt" {
		t.Fatalf("the carried prompt is %q, want the policy's", p)
	}
}

// TestMoveWaitsForPendingCall: a client-side function call pending when the
// warning comes holds the move until the client answers it.
func TestMoveWaitsForPendingCall(t *testing.T) {
	shortMoves(t, 300*time.Millisecond, time.Minute)
	h := newHarness(t, nil, fakedeepgram.Options{MaxSession: 8 * time.Second, SessionWarning: 7 * time.Second})
	c := startCall(t, h, greetedSettings)
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"call get_time"}`))
	req := readUntil(t, c, "FunctionCallRequest")
	var r struct {
		Functions []struct{ ID string } `json:"functions"`
	}
	if json.Unmarshal(req, &r) != nil || len(r.Functions) != 1 {
		t.Fatalf("request %s", req)
	}
	// The warning comes at 1 s; the call stays pending past it.
	time.Sleep(2500 * time.Millisecond)
	if n := len(h.fake.Handshakes()); n != 1 {
		t.Fatalf("the call moved while a function call was pending")
	}
	answered := time.Now()
	write(t, c, websocket.MessageText, []byte(`{"type":"FunctionCallResponse","id":"`+r.Functions[0].ID+`","name":"get_time","content":"noon"}`))
	untilContinued(t, c)
	if !strings.Contains(h.logs.String(), `"upstream moved"`) || time.Since(answered) > 5*time.Second {
		t.Fatalf("no move after the answer")
	}
	carried(t, h, "get_time", "noon")
}

// TestMoveOff: UPSTREAM_RESUME=off ends the call as Deepgram's connection
// ends.
func TestMoveOff(t *testing.T) {
	h := newHarness(t, map[string]string{"UPSTREAM_RESUME": "off"}, fakedeepgram.Options{})
	c := startCall(t, h, minimalSettings)
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
	expectClose(t, c, websocket.StatusBadGateway)
}

// TestMovesSpendTheUserRate: a move is a new session to Deepgram, so it
// spends the user's SESSION_RATE_PER_MINUTE: a user's calls cannot move
// faster than it may open them.
func TestMovesSpendTheUserRate(t *testing.T) {
	h := newHarness(t, map[string]string{"SESSION_RATE_PER_MINUTE": "2"}, fakedeepgram.Options{})
	c := startCall(t, h, minimalSettings) // one of the two
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
	untilContinued(t, c) // the second
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
	m := expectType(t, c, "Error")
	if m["code"] != "UPSTREAM_GONE" {
		t.Fatalf("Error %v, want UPSTREAM_GONE", m)
	}
	expectClose(t, c, websocket.StatusBadGateway)
	waitForLog(t, h.logs, "SESSION_RATE_PER_MINUTE")
}
