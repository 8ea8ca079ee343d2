package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// requireTool finds a program the end-to-end tests need. Locally a missing
// one skips the test; in CI (CI=true) it fails, so CI cannot pass by skipping.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; .ci/run installs it", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return path
}

// npmInstalled makes sure dir's pinned packages are installed, from its
// package-lock.json.
func npmInstalled(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err == nil {
		return
	}
	npm := requireTool(t, "npm")
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
}

// TestDeepgramSDKThroughRelay points Deepgram's own JavaScript SDK at the
// relay: Welcome and SettingsApplied arrive, audio goes both ways byte for
// byte, and the SDK's close reaches Deepgram as a normal close.
func TestDeepgramSDKThroughRelay(t *testing.T) {
	node := requireTool(t, "node")
	dir := filepath.Join("testdata", "e2e", "sdk")
	npmInstalled(t, dir)
	h := newHarness(t, authEnv(map[string]string{"PROXY_PATH": "/v1/agent/converse"}), fakedeepgram.Options{})

	cmd := exec.Command(node, "agent.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"RELAY_BASE=ws"+strings.TrimPrefix(h.srv.URL, "http"),
		"USER_TOKEN="+userToken(t, "sdk-user"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the SDK client failed: %v\n%s\nrelay logs:\n%s", err, out, h.logs.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got struct {
		Seen        []string
		AudioFrames int
		Close       *struct{ Code int }
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("SDK output %q: %v", out, err)
	}
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
