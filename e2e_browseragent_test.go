package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
)

// e2ePolicy is one SETTINGS_POLICY the real clients' end-to-end tests run
// under; an empty JSON is none.
type e2ePolicy struct{ Name, JSON string }

// e2ePolicies: no policy, then each policy the docs show.
func e2ePolicies(t *testing.T) []e2ePolicy {
	ps := []e2ePolicy{{Name: "no policy"}}
	for _, p := range documentedPolicies(t) {
		ps = append(ps, e2ePolicy(p))
	}
	return ps
}

// policyEnv is authEnv with p as SETTINGS_POLICY (and the secrets it
// names), plus extra.
func policyEnv(t *testing.T, p e2ePolicy, extra map[string]string) map[string]string {
	env := authEnv(extra)
	if p.JSON != "" {
		for k, v := range documentedPolicyEnv(t, p.JSON) {
			env[k] = v
		}
	}
	return env
}

// policyCut is where the relay's policy ends a real client's scripted call
// (Settings, then an UpdatePrompt, then the rest), as the event the client
// sent last before the refusal; "" when it lets the whole call through.
// The rules themselves are tested in internal/policy; here the real
// clients must meet them as the relay applies them.
func policyCut(t *testing.T, h *harness, settings map[string]any) string {
	p := h.relay.policy
	if p == nil {
		return ""
	}
	if v := p.Check([]byte(mustJSON(t, settings)), "agent"); v.Refused != "" {
		return "Settings"
	}
	if v := p.Check([]byte(`{"type":"UpdatePrompt","prompt":"Also be brief."}`), "agent"); v.Refused != "" {
		return "UpdatePrompt"
	} else if v.Drop {
		t.Fatalf("the policy drops the scripted UpdatePrompt; the clients' scripts wait for its ack")
	}
	return ""
}

// realClientSettings reads testdata/clients/<name>.settings.json.
func realClientSettings(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "clients", name+".settings.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

// browserAgentCall is what page.html's runCall reports.
type browserAgentCall struct {
	Events []string
	Counts struct {
		AudioUp, AudioDown int
		Protocol           string
	}
	Call *struct {
		Functions []struct {
			ID, Name   string
			ClientSide bool `json:"client_side"`
		}
	}
	CloseCode *int
	Why       string
}

// TestBrowserAgentThroughRelay runs Deepgram's <deepgram-agent> web component
// (@deepgram/browser-agent 0.2.1 from the npm registry) in headless Chromium
// with a fake microphone, pointed at the relay's Deepgram path
// (/v1/agent/converse, no PROXY_PATH set) with the user's JWT as its token,
// against the strict fake Deepgram: its Settings (the package's example
// config plus a client-side function) reach Deepgram as sent, the microphone's
// audio goes up and the agent's comes down, KeepAlive, UpdatePrompt,
// InjectUserMessage and a client-side function call round trip work, and its
// stop reaches Deepgram as a normal close. Then its audio flows across a move
// (e2e_move_test.go).
func TestBrowserAgentThroughRelay(t *testing.T) {
	chromium := requireTool(t, "chromium")
	dir := filepath.Join("testdata", "e2e", "browseragent")
	npmInstalled(t, dir)
	pageSrv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer pageSrv.Close()
	pageHost := strings.TrimPrefix(pageSrv.URL, "http://")
	ctx := chromiumContext(t, chromium, 60*time.Second,
		chromedp.Flag("use-fake-device-for-media-stream", true),
		chromedp.Flag("use-fake-ui-for-media-stream", true),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"))

	settings := realClientSettings(t, "browser-agent")
	think := settings["agent"].(map[string]any)["think"].(map[string]any)
	think["functions"] = []any{map[string]any{"name": "get_time", "description": "The time of day where the user is.",
		"parameters": map[string]any{"type": "object", "properties": map[string]any{}}}}
	for _, p := range e2ePolicies(t) {
		t.Run(p.Name, func(t *testing.T) {
			h := newHarness(t, policyEnv(t, p, map[string]string{"ALLOWED_ORIGINS": pageHost}), fakedeepgram.Options{APIKey: testAPIKey})
			url := "ws" + strings.TrimPrefix(h.srv.URL, "http") + "/v1/agent/converse"
			if err := chromedp.Do(ctx, chromedp.Navigate(pageSrv.URL+"/page.html")); err != nil {
				t.Fatalf("chromium: %v", err)
			}
			if _, err := chromedp.Run(ctx, chromedp.Poll[bool]("typeof window.runCall === 'function'")); err != nil {
				t.Fatalf("chromium: the page did not load the package: %v", err)
			}
			arg := map[string]any{"url": url, "token": userToken(t, "browser-agent-user"), "config": settings, "functionName": "get_time"}
			start := time.Now()
			got, err := chromedp.Run(ctx, chromedp.Evaluate[browserAgentCall]("window.runCall("+mustJSON(t, arg)+")", chromedp.EvalAwaitPromise))
			if err != nil {
				t.Fatalf("chromium: %v", err)
			}
			t.Logf("the call took %v; the page saw %q", time.Since(start).Round(time.Millisecond), got.Events)
			want := []string{"open", "client Settings", "message Welcome", "message SettingsApplied", "client KeepAlive", "client UpdatePrompt", "message PromptUpdated",
				"client InjectUserMessage", "message ConversationText", "client InjectUserMessage", "message FunctionCallRequest", "client FunctionCallResponse", "close 1000"}
			if cut := policyCut(t, h, settings); cut != "" {
				want = append(want[:slices.Index(want, "client "+cut)+1], "message Error SETTINGS_REFUSED", "close 1008")
				if !isSubsequence(want, got.Events) {
					t.Fatalf("the page saw %q (%s), want in order %q", got.Events, got.Why, want)
				}
				return
			}
			if !isSubsequence(want, got.Events) || got.Why != "closed" {
				t.Fatalf("the page saw %q (%s), want in order %q\nrelay logs:\n%s", got.Events, got.Why, want, h.logs.String())
			}
			if slices.ContainsFunc(got.Events, func(e string) bool { return strings.HasPrefix(e, "message Error") || strings.HasPrefix(e, "failure") }) {
				t.Errorf("the page saw an error: %q", got.Events)
			}
			if got.Counts.Protocol != "bearer" || got.Counts.AudioUp < 3 || got.Counts.AudioDown < 2*fakedeepgram.ReplyFrames {
				t.Errorf("subprotocol %q, %d audio messages up, %d down", got.Counts.Protocol, got.Counts.AudioUp, got.Counts.AudioDown)
			}
			if c := got.Call; c == nil || len(c.Functions) != 1 || c.Functions[0].Name != "get_time" || !c.Functions[0].ClientSide {
				t.Errorf("function call request %+v", got.Call)
			}
			if heard := h.fake.Heard(); heard.Messages == 0 || heard.Bytes != int64(heard.Messages)*8192 {
				t.Errorf("Deepgram heard %+v of the fake microphone, want its ScriptProcessor frames of 4096 samples", heard)
			}
			if c := h.upstreamClosed(); c.Code != websocket.StatusNormalClosure {
				t.Errorf("the stop reached Deepgram as %+v", c)
			}
			texts := h.fake.Texts()
			var first map[string]any
			if len(texts) == 0 || json.Unmarshal(texts[0], &first) != nil {
				t.Fatalf("Deepgram's first text: %q", texts)
			}
			if p.JSON == "" && !reflect.DeepEqual(first, settings) {
				t.Errorf("Deepgram got Settings %s, want %s", texts[0], mustJSON(t, settings))
			}
		})
	}
	t.Run("audio across a move", func(t *testing.T) { browserAgentAudioAcrossMove(t, ctx, pageSrv.URL) })
}

// isSubsequence reports whether want appears in got in order, other items
// between them allowed.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}
