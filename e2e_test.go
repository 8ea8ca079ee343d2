package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// sdkResult is the JSON line agent.mjs prints last.
type sdkResult struct {
	AudioDown int
	// Audio (stream mode): the echoed frames before and after the first
	// move, those not as sent or out of order, the moves seen and the
	// number of the last frame sent.
	Audio struct{ Before, After, Bad, Moves, Last int }
	// Events: the messages the SDK surfaced, what agent.mjs sent and the
	// SDK's close, in order ("message Error UPSTREAM_GONE", "sent KeepAlive",
	// "audio", "message Warning SESSION_CONTINUED", "close 1014").
	Events []string
	// Error is the last Error message the SDK surfaced, as it typed it.
	Error *struct{ Type, Code, Description string }
	Close *struct {
		Code   int
		Reason string
	}
}

// sdkSettingsFile is the Settings agent.mjs sends (plus a function).
var sdkSettingsFile, _ = filepath.Abs(filepath.Join("testdata", "clients", "deepgram-sdk.settings.json"))

// runSDKAgent runs agent.mjs in mode (see its comment) with token against
// h's relay, and returns what it printed last.
func runSDKAgent(t *testing.T, h *harness, mode, token string) sdkResult {
	t.Helper()
	return runSDKAgentWith(t, h, mode, token, nil, nil)
}

// runSDKAgentWith is runSDKAgent with more environment, and atApplied (if
// not nil) run when agent.mjs prints "applied" (the giveup mode), after which
// it is told to go on.
func runSDKAgentWith(t *testing.T, h *harness, mode, token string, env []string, atApplied func()) sdkResult {
	t.Helper()
	node := requireTool(t, "node")
	dir := filepath.Join("testdata", "e2e", "sdk")
	npmInstalled(t, dir)
	cmd := exec.Command(node, "agent.mjs")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(),
		"RELAY_BASE=ws"+strings.TrimPrefix(h.srv.URL, "http"),
		"USER_TOKEN="+token,
		"SETTINGS="+sdkSettingsFile,
		"MODE="+mode), env...)
	// stderr is the exec package's to write until Wait; printed is ours.
	var stderr, printed bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("the SDK client: %v", err)
	}
	var last string
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 1<<20)
	for lines.Scan() {
		last = lines.Text()
		printed.WriteString(last + "\n")
		if last == "applied" && atApplied != nil {
			atApplied()
			_, _ = stdin.Write([]byte("go\n"))
		}
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the SDK client failed: %v\n%s%s\nrelay logs:\n%s", err, printed.String(), stderr.String(), h.logs.String())
	}
	var got sdkResult
	if err := json.Unmarshal([]byte(last), &got); err != nil {
		t.Fatalf("SDK output %q: %v", printed.String()+stderr.String(), err)
	}
	return got
}

// TestDeepgramSDKThroughRelay runs README's @deepgram/sdk snippet
// (voice-agent.mjs) as written, given only the relay's base URL (the relay
// serves the /v1/agent/converse the SDK appends; no PROXY_PATH), against
// the strict fake Deepgram, with no Settings policy and with each the docs
// show: its Settings reach Deepgram, KeepAlive and UpdatePrompt pass, audio
// goes up and the agent's comes down, InjectUserMessage gets its turn, a
// client-side function call is answered, and the SDK's close reaches
// Deepgram as a normal close.
func TestDeepgramSDKThroughRelay(t *testing.T) {
	requireTool(t, "node")
	for _, p := range e2ePolicies(t) {
		t.Run(p.Name, func(t *testing.T) {
			h := newHarness(t, policyEnv(t, p, nil), fakedeepgram.Options{APIKey: testAPIKey})
			start := time.Now()
			got := runSDKAgent(t, h, "relay", userToken(t, "sdk-user"))
			t.Logf("the SDK's call took %v", time.Since(start).Round(time.Millisecond))
			want := []string{"message Welcome", "message SettingsApplied", "sent KeepAlive", "sent UpdatePrompt", "message PromptUpdated",
				"sent InjectUserMessage", "message ConversationText", "audio", "message AgentAudioDone",
				"sent InjectUserMessage", "message FunctionCallRequest", "sent FunctionCallResponse", "message AgentAudioDone", "close 1000"}
			sent := realClientSettings(t, "deepgram-sdk")
			sent["agent"].(map[string]any)["think"].(map[string]any)["functions"] = []any{map[string]any{"name": "get_time",
				"description": "The time of day where the user is.", "parameters": map[string]any{"type": "object", "properties": map[string]any{}}}}
			if cut := policyCut(t, h, sent); cut != "" {
				want = append(want[:slices.Index(want, "sent "+cut)+1], "message Error SETTINGS_REFUSED", "close 1008")
				if !isSubsequence(want, got.Events) {
					t.Fatalf("the SDK saw %q, want in order %q", got.Events, want)
				}
				return
			}
			if !isSubsequence(want, got.Events) || got.AudioDown < 2*fakedeepgram.ReplyFrames || got.Error != nil {
				t.Fatalf("the SDK saw %q (%d audio messages), want in order %q", got.Events, got.AudioDown, want)
			}
			if c := h.upstreamClosed(); c.Code != websocket.StatusNormalClosure {
				t.Errorf("the SDK's close reached Deepgram as %+v", c)
			}
			if heard := h.fake.Heard(); heard.Messages != 5 || heard.Bytes != 5*3200 {
				t.Errorf("Deepgram heard %+v, want the 5 frames of 3200 B", heard)
			}
			var first map[string]any
			if texts := h.fake.Texts(); len(texts) == 0 || json.Unmarshal(texts[0], &first) != nil || (p.JSON == "" && !reflect.DeepEqual(first, sent)) {
				t.Errorf("Deepgram's first text: %q, want the Settings %s", texts, mustJSON(t, sent))
			}
			hs := h.fake.Handshakes()
			if up := hs[len(hs)-1]; up.Path != "/v1/agent/converse" || up.Header.Get("Authorization") != "Token "+testAPIKey {
				t.Errorf("upstream handshake %s with Authorization other than the relay's key", up.Path)
			}
		})
	}
}

// TestDeepgramSDKErrorFrame: @deepgram/sdk (5.x) has no event of its own for
// Deepgram's in-band errors; it surfaces a {"type":"Error"} frame as a
// message typed AgentV1Error, on its "message" handler (its "error" handler
// is the socket's). The relay's Error frames must reach an app that way,
// with their code, before the SDK's close: for Deepgram vanishing mid-session
// when no new connection can take the call, and for an expired token. When
// one can, the SDK sees the relay's Warning SESSION_CONTINUED and no close,
// and the call goes on.
func TestDeepgramSDKErrorFrame(t *testing.T) {
	requireTool(t, "node")
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})
	// expect: the SDK surfaced events, its Error message has errorCode
	// and description (the close's reason when ""), its close code and
	// reason.
	expect := func(t *testing.T, got sdkResult, code int, reason, errorCode, description string, events []string) {
		t.Helper()
		if !slices.Equal(got.Events, events) {
			t.Fatalf("the SDK surfaced %q, want %q", got.Events, events)
		}
		if description == "" {
			description = reason
		}
		if e := got.Error; e == nil || e.Type != "Error" || e.Code != errorCode || e.Description != description {
			t.Fatalf("the SDK's Error message %+v, want code %s, description %q", got.Error, errorCode, description)
		}
		if got.Close == nil || got.Close.Code != code || got.Close.Reason != reason {
			t.Fatalf("the SDK's close %+v, want %d %q", got.Close, code, reason)
		}
	}
	t.Run("upstream vanishes: the call moves", func(t *testing.T) {
		before := len(h.fake.Handshakes())
		got := runSDKAgent(t, h, "move", userToken(t, "sdk-user"))
		t.Logf("the SDK saw %q", got.Events)
		want := []string{"message Welcome", "message SettingsApplied", "sent Fake.Vanish", "message Warning SESSION_CONTINUED",
			"sent InjectUserMessage", "message ConversationText", "audio", "message AgentAudioDone", "close 1000"}
		if !isSubsequence(want, got.Events) || got.Error != nil || got.Close == nil || got.Close.Code != 1000 {
			t.Fatalf("the SDK saw %q, want in order %q and no other close", got.Events, want)
		}
		for _, once := range []string{"message Welcome", "message SettingsApplied", "message Warning SESSION_CONTINUED"} {
			if n := countOf(got.Events, once); n != 1 {
				t.Fatalf("the SDK saw %q %d times: %q", once, n, got.Events)
			}
		}
		if n := len(h.fake.Handshakes()) - before; n != 2 {
			t.Fatalf("%d connections to Deepgram, want the first and the move's", n)
		}
		if gone, last := h.upstreamClosed(), h.upstreamClosed(); gone.Code != -1 || last.Code != websocket.StatusNormalClosure {
			t.Fatalf("Deepgram's connections ended %+v and %+v, want dropped, then the SDK's close on the new one", gone, last)
		}
	})
	t.Run("upstream vanishes: the move gives up", func(t *testing.T) {
		// Deepgram refuses every new connection once the call is up: the
		// move cannot take it over.
		defer h.fake.SetOptions(fakedeepgram.Options{})
		got := runSDKAgentWith(t, h, "giveup", userToken(t, "sdk-user"), nil, func() {
			h.fake.SetOptions(fakedeepgram.Options{RejectStatus: 503})
		})
		expect(t, got, 1014, "upstream went away", "UPSTREAM_GONE", moveFailedDescription,
			[]string{"message Welcome", "message SettingsApplied", "sent Fake.Vanish", "message Error UPSTREAM_GONE", "close 1014"})
		h.upstreamClosed()
	})
	t.Run("expired token", func(t *testing.T) {
		before := len(h.fake.Handshakes())
		got := runSDKAgent(t, h, "expired", hs256(t, testJWTSecret, claims{sub: "sdk-user", exp: -time.Hour}))
		expect(t, got, 4401, "token expired", "TOKEN_EXPIRED", "",
			[]string{"message Error TOKEN_EXPIRED", "close 4401"})
		if len(h.fake.Handshakes()) != before {
			t.Fatal("an expired token reached Deepgram")
		}
	})
}

// countOf is how many times e is in events.
func countOf(events []string, e string) int {
	n := 0
	for _, x := range events {
		if x == e {
			n++
		}
	}
	return n
}
