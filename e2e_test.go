package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// sdkResult is the JSON line agent.mjs prints last.
type sdkResult struct {
	Seen        []string
	AudioFrames int
	// Events: the messages the SDK surfaced and its close, in order
	// ("message Error UPSTREAM_GONE", "close 1014").
	Events []string
	// Error is the last Error message the SDK surfaced, as it typed it.
	Error *struct{ Type, Code, Description string }
	Close *struct {
		Code   int
		Reason string
	}
}

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

// TestDeepgramSDKThroughRelay points Deepgram's own JavaScript SDK at the
// relay: Welcome and SettingsApplied arrive, audio goes both ways byte for
// byte, and the SDK's close reaches Deepgram as a normal close.
func TestDeepgramSDKThroughRelay(t *testing.T) {
	requireTool(t, "node")
	h := newHarness(t, authEnv(map[string]string{"PROXY_PATH": "/v1/agent/converse"}), fakedeepgram.Options{})
	got := runSDKAgent(t, h, "relay", userToken(t, "sdk-user"))
	if !slices.Equal(got.Seen[:2], []string{"Welcome", "SettingsApplied"}) || got.AudioFrames != 5 {
		t.Errorf("the SDK saw %+v", got)
	}
	if c := h.upstreamClosed(); c.Code != websocket.StatusNormalClosure {
		t.Errorf("the SDK's close reached Deepgram as %+v", c)
	}
	texts := h.fake.Texts()
	if len(texts) == 0 || !strings.Contains(string(texts[0]), `"type":"Settings"`) {
		t.Errorf("upstream did not get the SDK's Settings: %q", texts)
	}
	hs := h.fake.Handshakes()
	if auth := hs[len(hs)-1].Header.Get("Authorization"); auth != "Token "+testAPIKey {
		t.Errorf("upstream Authorization is not the relay's key")
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
	h := newHarness(t, authEnv(map[string]string{"PROXY_PATH": "/v1/agent/converse"}), fakedeepgram.Options{})
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
