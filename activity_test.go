package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// received is one thing a client read: a message or the error that ended
// its reading.
type received struct {
	typ  websocket.MessageType
	data []byte
	err  error
	at   time.Time
}

// collect reads c on its own goroutine until it fails, sending each message
// (and the last error) on the channel it returns.
func collect(c *websocket.Conn) <-chan received {
	out := make(chan received, 1024)
	go func() {
		defer close(out)
		for {
			typ, data, err := c.Read(context.Background())
			out <- received{typ, data, err, time.Now()}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// streamQuietly sends what an abandoned tab sends: a 20 ms frame of silence
// every 20 ms and KeepAlive every 100 ms, until c fails or the test ends.
func streamQuietly(t *testing.T, c *websocket.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		silence := make([]byte, 640) // linear16 16 kHz: 20 ms
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if c.Write(ctx, websocket.MessageBinary, silence) != nil {
				return
			}
			if i%5 == 0 && c.Write(ctx, websocket.MessageText, []byte(`{"type":"KeepAlive"}`)) != nil {
				return
			}
		}
	}()
}

// nextOf waits for the next text message of type typ (skipping others), or
// fails the test when the connection ends first or within.
func nextOf(t *testing.T, in <-chan received, typ string, within time.Duration) map[string]any {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case r, ok := <-in:
			if !ok || r.err != nil {
				t.Fatalf("waiting for %s: the connection ended: %v", typ, r.err)
			}
			var m map[string]any
			if r.typ == websocket.MessageText && json.Unmarshal(r.data, &m) == nil && m["type"] == typ {
				return m
			}
		case <-timeout:
			t.Fatalf("no %s within %s", typ, within)
		}
	}
}

// quietFor fails the test if the relay sends an Error or closes within d.
func quietFor(t *testing.T, in <-chan received, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case r := <-in:
			if r.err != nil {
				t.Fatalf("the session ended: %v", r.err)
			}
			if r.typ == websocket.MessageText && strings.Contains(string(r.data), `"Error"`) {
				t.Fatalf("the relay sent %s", r.data)
			}
		case <-timeout:
			return
		}
	}
}

// expectConversationIdle waits for the conversation idle ending: its Error
// frame (idle_timeout, saying why) and then its close, for at most limit
// and 5 s. It returns when the Error came.
func expectConversationIdle(t *testing.T, in <-chan received, limit time.Duration) time.Time {
	t.Helper()
	timeout := time.After(limit + 5*time.Second)
	next := func() received {
		select {
		case r, ok := <-in:
			if !ok {
				t.Fatal("the connection ended without a close")
			}
			return r
		case <-timeout:
			t.Fatal("the session did not end in time")
		}
		return received{}
	}
	var at time.Time
	for at.IsZero() {
		r := next()
		if r.err != nil {
			t.Fatalf("closed before the Error frame: %v", r.err)
		}
		var m map[string]any
		if r.typ != websocket.MessageText || json.Unmarshal(r.data, &m) != nil || m["type"] != "Error" {
			continue
		}
		want := fmt.Sprintf("nobody spoke for %s (CONVERSATION_IDLE_TIMEOUT)", limit)
		if m["code"] != "idle_timeout" || m["description"] != want {
			t.Fatalf("Error frame %s, want idle_timeout with %q", r.data, want)
		}
		at = r.at
	}
	for {
		r := next()
		if r.err == nil {
			continue // audio in flight
		}
		var ce websocket.CloseError
		if !errors.As(r.err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "nobody spoke" {
			t.Fatalf("after the Error frame: %v, want close 1008 nobody spoke", r.err)
		}
		return at
	}
}

// TestConversationIdleEnds: an agent session in which the strict fake reports
// no speech ends at CONVERSATION_IDLE_TIMEOUT while the client streams
// silence and KeepAlive, which IDLE_TIMEOUT counts; Deepgram gets a normal
// close and the log line names the cause.
func TestConversationIdleEnds(t *testing.T) {
	const limit = 500 * time.Millisecond
	h := newHarness(t, map[string]string{"CONVERSATION_IDLE_TIMEOUT": limit.String(), "IDLE_TIMEOUT": "200ms"}, fakedeepgram.Options{})
	began := time.Now()
	c := h.agentSession("")
	in := collect(c)
	streamQuietly(t, c)
	at := expectConversationIdle(t, in, limit)
	if took := at.Sub(began); took < limit || took > limit+2*time.Second {
		t.Errorf("ended %s after the start, want %s (and a tick)", took, limit)
	}
	if heard := h.fake.Heard(); heard.Messages < 10 || heard.Peak != 0 {
		t.Errorf("Deepgram heard %+v, want silence all along", heard)
	}
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "nobody spoke" {
		t.Errorf("Deepgram got %+v, want 1000 nobody spoke", got)
	}
	h.settled()
	if end := sessionEnd(t, h.logs.String()); end["cause"] != "conversation_idle" {
		t.Errorf("session end %v, want cause conversation_idle", end)
	}
}

// TestConversationTurnsKeepCall: turns (InjectUserMessage, which the fake
// plays as Deepgram does: the user's words, the agent's reply and its
// speech) keep a call going past CONVERSATION_IDLE_TIMEOUT; once they stop,
// it ends a period after the last.
func TestConversationTurnsKeepCall(t *testing.T) {
	const limit = 600 * time.Millisecond
	h := newHarness(t, map[string]string{"CONVERSATION_IDLE_TIMEOUT": limit.String()}, fakedeepgram.Options{})
	c := h.agentSession("")
	in := collect(c)
	streamQuietly(t, c)
	for range 6 { // 6 × 300 ms: three periods
		write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"still here"}`))
		quietFor(t, in, 300*time.Millisecond)
	}
	last := time.Now()
	at := expectConversationIdle(t, in, limit)
	if took := at.Sub(last); took < limit-300*time.Millisecond {
		t.Errorf("ended %s after the last turn began, want about %s", took, limit)
	}
}

// functionSettings are Settings with one client-side function, lookup (no
// endpoint: AsyncAPI spec, ThinkSettingsV1FunctionsItems), and History on
// or off (flags.history).
func functionSettings(history bool) string {
	return `{"type":"Settings","flags":{"history":` + fmt.Sprint(history) + `},` +
		`"audio":{"input":{"encoding":"linear16","sample_rate":16000}},` +
		`"agent":{"think":{"provider":{"type":"open_ai","model":"gpt-4o-mini"},` +
		`"functions":[{"name":"lookup","description":"looks up","parameters":{"type":"object","properties":{}}}]}}}`
}

// TestConversationIdlePausedByCall: a client-side function call pending
// pauses the timer (the app may take long to answer, up to one period more)
// and callPending says so; once Deepgram reports the answer, by History or, with History off,
// by the agent's words, the timer counts again from then.
func TestConversationIdlePausedByCall(t *testing.T) {
	for _, history := range []bool{true, false} {
		t.Run(fmt.Sprintf("history=%v", history), func(t *testing.T) {
			const limit = 400 * time.Millisecond
			h := newHarness(t, map[string]string{"CONVERSATION_IDLE_TIMEOUT": limit.String()}, fakedeepgram.Options{})
			c := h.dial("")
			write(t, c, websocket.MessageText, []byte(functionSettings(history)))
			in := collect(c)
			nextOf(t, in, "SettingsApplied", 5*time.Second)
			streamQuietly(t, c)
			write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"call lookup"}`))
			req := nextOf(t, in, "FunctionCallRequest", 5*time.Second)
			call := req["functions"].([]any)[0].(map[string]any)
			if call["client_side"] != true {
				t.Fatalf("the fake asked %v, want a client-side call", req)
			}
			s := onlySession(t, h)
			waitFor(t, s.callPending)
			// Past the limit, the pending call holds it (for one
			// period more at most: TestConversationIdleCallPauseBounded).
			quietFor(t, in, limit*3/2)
			if !s.callPending() {
				t.Fatal("callPending false before the answer")
			}
			answered := time.Now()
			write(t, c, websocket.MessageText, []byte(`{"type":"FunctionCallResponse","id":"`+call["id"].(string)+`","name":"lookup","content":"42"}`))
			nextOf(t, in, "ConversationText", 5*time.Second) // the agent's reply
			waitFor(t, func() bool { return !s.callPending() })
			at := expectConversationIdle(t, in, limit)
			if took := at.Sub(answered); took < limit {
				t.Errorf("ended %s after the answer, want at least %s", took, limit)
			}
		})
	}
}

// onlySession is the relay's one live session.
func onlySession(t *testing.T, h *harness) *session {
	t.Helper()
	var live []*session
	waitFor(t, func() bool { live = h.relay.sessions.snapshot(); return len(live) == 1 })
	return live[0]
}

// TestConversationIdleOff: 0 turns it off, and transcription sessions are
// never timed so.
func TestConversationIdleOff(t *testing.T) {
	w := newWatchdog(0, 0, time.Second, 0, time.Second, 0)
	s := &session{facts: &facts{service: "agent"}, started: time.Now().Add(-time.Hour)}
	if _, ended := w.check(s, time.Now()); ended {
		t.Error("CONVERSATION_IDLE_TIMEOUT=0 ended a session")
	}
	w = newWatchdog(0, time.Minute, time.Second, 0, time.Second, 0)
	if o, ended := w.check(s, time.Now()); !ended || o.cause != endConversationIdle.cause {
		t.Errorf("an agent session an hour silent: %v %v, want conversation_idle", o, ended)
	}
	s.service = "transcription"
	if _, ended := w.check(s, time.Now()); ended {
		t.Error("a transcription session ended for want of speech")
	}
}

// TestCallPendingSignals: what ends a pending call, and what does not: a
// History listing it with its response ends that call only; the user's
// words, a History without the response, a server-side call and speech
// before any call end none; the agent's words end them all.
func TestCallPendingSignals(t *testing.T) {
	var c conversation
	c.conversationText([]byte(`{"type":"ConversationText","role":"assistant","content":"Let me look."}`))
	c.callRequested([]byte(`{"type":"FunctionCallRequest","functions":[` +
		`{"id":"a","name":"f","arguments":"{}","client_side":true},` +
		`{"id":"b","name":"f","arguments":"{}","client_side":true},` +
		`{"id":"c","name":"g","arguments":"{}","client_side":false}]}`))
	for _, step := range []struct {
		note    func([]byte)
		msg     string
		pending int32
	}{
		{nil, "", 2},
		{c.historyMessage, `{"type":"History","function_calls":[{"id":"a","name":"f","client_side":true,"arguments":"{}"}]}`, 2},
		{c.historyMessage, `{"type":"History","function_calls":[{"id":"a","name":"f","client_side":true,"arguments":"{}","response":"1"}]}`, 1},
		{c.historyMessage, `{"type":"History","function_calls":[{"id":"c","name":"g","client_side":false,"arguments":"{}","response":"2"}]}`, 1},
		{c.conversationText, `{"type":"ConversationText","role":"user","content":"hello?"}`, 1},
		{c.historyMessage, `{"type":"History","role":"user","content":"hello?"}`, 1},
		{c.conversationText, `{"type":"ConversationText","role":"assistant","content":"It says 1."}`, 0},
	} {
		if step.note != nil {
			step.note([]byte(step.msg))
		}
		if got := c.pending.Load(); got != step.pending {
			t.Fatalf("after %s: %d pending (%v), want %d", step.msg, got, c.calls, step.pending)
		}
	}
}

// FuzzConversation feeds Deepgram's messages of the kinds the conversation
// reads, whatever their bodies, and checks what it keeps: pending says how
// many calls are remembered, each id once, never past maxPendingCalls.
func FuzzConversation(f *testing.F) {
	many := `{"type":"FunctionCallRequest","functions":[`
	for i := range maxPendingCalls + 1 {
		if i > 0 {
			many += ","
		}
		many += fmt.Sprintf(`{"id":"c%d","name":"f","arguments":"{}","client_side":true}`, i)
	}
	many += `]}`
	for _, seed := range []string{
		many,
		`{"type":"FunctionCallRequest","functions":[{"id":"a","client_side":true},{"id":"a","client_side":true},{"id":"","client_side":true},{"id":"b","client_side":false}]}`,
		`{"type":"History","function_calls":[{"id":"a","name":"f","client_side":true,"arguments":"{}","response":"ok"}]}`,
		`{"type":"History","function_calls":[{"id":"a","response":null}]}`,
		`{"type":"History","role":"user","content":"hi"}`,
		`{"type":"ConversationText","role":"assistant","content":"hi"}`,
		`{"type":"ConversationText","role":"system","content":"hi"}`,
		`{"type":"ConversationText","role":1}`,
		`{"type":"FunctionCallRequest","functions":{}}`,
		`[`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		var c conversation
		c.callRequested([]byte(many))
		for _, note := range []func([]byte){c.callRequested, c.historyMessage, c.conversationText} {
			note(msg)
			if int(c.pending.Load()) != len(c.calls) || len(c.calls) > maxPendingCalls {
				t.Fatalf("pending %d, calls %v", c.pending.Load(), c.calls)
			}
			for i, id := range c.calls {
				if id == "" || slices.Contains(c.calls[i+1:], id) {
					t.Fatalf("calls %q: an empty or repeated id", c.calls)
				}
			}
		}
	})
}

// TestConversationIdleCallPauseBounded: a client-side call never answered (an
// app whose function handler died) pauses the timer for one period more, not
// for ever: the call ends at twice CONVERSATION_IDLE_TIMEOUT of silence.
func TestConversationIdleCallPauseBounded(t *testing.T) {
	const limit = 400 * time.Millisecond
	h := newHarness(t, map[string]string{"CONVERSATION_IDLE_TIMEOUT": limit.String()}, fakedeepgram.Options{})
	c := h.dial("")
	write(t, c, websocket.MessageText, []byte(functionSettings(true)))
	in := collect(c)
	nextOf(t, in, "SettingsApplied", 5*time.Second)
	streamQuietly(t, c)
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"call lookup"}`))
	nextOf(t, in, "FunctionCallRequest", 5*time.Second)
	asked := time.Now()
	waitFor(t, onlySession(t, h).callPending)
	at := expectConversationIdle(t, in, limit)
	if took := at.Sub(asked); took < 2*limit-200*time.Millisecond || took > 2*limit+time.Second {
		t.Errorf("ended %s after the call was asked, want about %s", took, 2*limit)
	}
}
