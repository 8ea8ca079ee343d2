package main

import (
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
	// Events: the messages the SDK surfaced, what agent.mjs sent and the
	// SDK's close, in order ("message Error UPSTREAM_GONE", "sent KeepAlive",
	// "audio", "close 1014").
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
	node := requireTool(t, "node")
	dir := filepath.Join("testdata", "e2e", "sdk")
	npmInstalled(t, dir)
	cmd := exec.Command(node, "agent.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"RELAY_BASE=ws"+strings.TrimPrefix(h.srv.URL, "http"),
		"USER_TOKEN="+token,
		"SETTINGS="+sdkSettingsFile,
		"MODE="+mode)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the SDK client failed: %v\n%s\nrelay logs:\n%s", err, out, h.logs.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got sdkResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("SDK output %q: %v", out, err)
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
// and for an expired token.
func TestDeepgramSDKErrorFrame(t *testing.T) {
	requireTool(t, "node")
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})
	expect := func(t *testing.T, got sdkResult, code int, reason, errorCode string, events []string) {
		t.Helper()
		if !slices.Equal(got.Events, events) {
			t.Fatalf("the SDK surfaced %q, want %q", got.Events, events)
		}
		if e := got.Error; e == nil || e.Type != "Error" || e.Code != errorCode || e.Description != reason {
			t.Fatalf("the SDK's Error message %+v, want code %s, description %q", got.Error, errorCode, reason)
		}
		if got.Close == nil || got.Close.Code != code || got.Close.Reason != reason {
			t.Fatalf("the SDK's close %+v, want %d %q", got.Close, code, reason)
		}
	}
	t.Run("upstream vanishes", func(t *testing.T) {
		got := runSDKAgent(t, h, "vanish", userToken(t, "sdk-user"))
		expect(t, got, 1014, "upstream went away", "UPSTREAM_GONE",
			[]string{"message Welcome", "message SettingsApplied", "message Error UPSTREAM_GONE", "close 1014"})
		h.upstreamClosed()
	})
	t.Run("expired token", func(t *testing.T) {
		before := len(h.fake.Handshakes())
		got := runSDKAgent(t, h, "expired", hs256(t, testJWTSecret, claims{sub: "sdk-user", exp: -time.Hour}))
		expect(t, got, 4401, "token expired", "TOKEN_EXPIRED",
			[]string{"message Error TOKEN_EXPIRED", "close 4401"})
		if len(h.fake.Handshakes()) != before {
			t.Fatal("an expired token reached Deepgram")
		}
	})
}
