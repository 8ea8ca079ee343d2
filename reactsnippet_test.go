package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"
)

// TestReactSnippetTokens runs README's React snippet (VoiceAgent.jsx) under
// Node, compiled by esbuild with a small fake React and a stand-in of
// DeepgramVoiceInteraction that handles its token as the component does
// (testdata/e2e/react), against the relay with real JWTs: talk, stop, talk;
// talk after the relay ended the call (Deepgram vanished); talk 300 ms after
// stop. Each Talk must open a socket with the token it just fetched, and
// reach SettingsApplied. Node and a fake React rather than Chromium and the
// real component: the component is on GitHub Packages behind a token, and
// what is under test is the snippet's order of stop, fetch and start.
func TestReactSnippetTokens(t *testing.T) {
	node := requireTool(t, "node")
	npmInstalled(t, filepath.Join("testdata", "snippets", "jsx-check"))
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})
	var tokens []string
	for i := range 4 {
		tokens = append(tokens, userToken(t, fmt.Sprintf("react-user-%d", i)))
	}
	cmd := exec.Command(node, "--experimental-websocket", "--no-warnings", "run.mjs")
	cmd.Dir = filepath.Join("testdata", "e2e", "react")
	cmd.Env = append(os.Environ(), "RELAY="+h.wsURL, "TOKENS="+strings.Join(tokens, ","))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run.mjs: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got struct {
		Sockets []struct {
			Token  string
			Events []string
		}
		Fetched          []string
		TimedOut         bool
		Status           string
		SignedOut        []string
		SocketsSignedOut int
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("run.mjs printed %s: %v", out, err)
	}
	names := map[string]string{"": "none"}
	for i, tok := range tokens {
		names[tok] = fmt.Sprintf("token %d", i)
	}
	var seen []string
	for _, s := range got.Sockets {
		seen = append(seen, fmt.Sprintf("%s: %q", names[s.Token], s.Events))
	}
	t.Logf("sockets: %s", strings.Join(seen, "; "))
	if len(got.Sockets) != 4 || got.TimedOut {
		t.Fatalf("%d sockets for 4 presses of Talk (talk, stop, talk; the relay ends the call, talk; stop, talk 300 ms later)", len(got.Sockets))
	}
	for i, s := range got.Sockets {
		if i >= len(got.Fetched) || s.Token != got.Fetched[i] || !slices.Contains(s.Events, "SettingsApplied") {
			t.Errorf("Talk %d opened a socket with %s (fetched %d tokens), which saw %q", i+1, names[s.Token], len(got.Fetched), s.Events)
		}
	}
	// Signed out, the token routes answer 401 {"error"}: the snippet shows
	// it; a page without a token (a login redirect) is shown as such.
	if len(got.SignedOut) != 2 || !strings.Contains(got.SignedOut[0], "voice token: sign in first") ||
		!strings.Contains(got.SignedOut[1], "voice token: HTTP 200, no token") || got.SocketsSignedOut != 0 {
		t.Errorf("signed out, the snippet showed %q and opened %d sockets; want the route's error, then \"no token\", and none",
			got.SignedOut, got.SocketsSignedOut)
	}
	if !strings.Contains(got.Status, "agent: ") {
		t.Errorf("the snippet shows no connection state: %q", got.Status)
	}
}
