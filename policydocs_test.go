package main

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"github.com/coder/websocket"
)

// policyDoc is the manual whose example policies are tested here.
const policyDoc = "docs/settings-policy.md"

// documentedPolicy is one example policy of policyDoc: the JSON block after
// a <!-- policy: NAME --> line.
type documentedPolicy struct{ Name, JSON string }

var policyMarker = regexp.MustCompile("(?m)^<!-- policy: ([a-z0-9-]+) -->\n```json\n")

// documentedPolicies reads every example policy from policyDoc, so that a new
// example is tested as soon as it is written.
func documentedPolicies(t *testing.T) []documentedPolicy {
	t.Helper()
	raw, err := os.ReadFile(policyDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	var out []documentedPolicy
	for _, m := range policyMarker.FindAllStringSubmatchIndex(doc, -1) {
		body, _, ok := strings.Cut(doc[m[1]:], "\n```")
		if !ok {
			t.Fatalf("%s: the block after policy %s is not closed", policyDoc, doc[m[2]:m[3]])
		}
		out = append(out, documentedPolicy{Name: doc[m[2]:m[3]], JSON: body})
	}
	if len(out) == 0 || len(out) != strings.Count(doc, "<!-- policy:") {
		t.Fatalf("%s: %d policy markers, %d right before a json block", policyDoc, strings.Count(doc, "<!-- policy:"), len(out))
	}
	return out
}

// documentedPolicyEnv is the environment a relay needs to run policy: the
// policy itself, and an in-process Secret Manager holding a value for each
// ${secret:} it names (each ${env:} is set too).
func documentedPolicyEnv(t *testing.T, policy string) map[string]string {
	t.Helper()
	env := map[string]string{"SETTINGS_POLICY": policy}
	sm := &fakeSecretManager{payloads: map[string]*secretmanagerpb.SecretPayload{}}
	for _, m := range policyReference.FindAllStringSubmatch(policy, -1) {
		value := "doc-SECRET-" + strings.NewReplacer("/", "-", ":", "-").Replace(m[2])
		if m[1] == "secret" {
			sm.payloads[m[2]] = withCRC(value)
		} else {
			env[m[2]] = value
		}
	}
	if len(sm.payloads) > 0 {
		env["SECRETMANAGER_EMULATOR_HOST"] = startFakeSecretManager(t, sm)
	}
	return env
}

// defaultClientSettings reads the Settings each real client sends by default.
func defaultClientSettings(t *testing.T) map[string]string {
	t.Helper()
	files, _ := filepath.Glob("testdata/clients/*.settings.json")
	if len(files) < 3 {
		t.Fatalf("testdata/clients holds %d Settings, want the React component's, @deepgram/sdk's and @deepgram/browser-agent's", len(files))
	}
	out := map[string]string{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".settings.json")] = string(raw)
	}
	return out
}

// policyPromises is what each documented example promises beyond "the
// client's Settings pass": checked on what Deepgram received, and by what a
// client sees after. A documented policy without an entry fails the test.
var policyPromises = map[string]func(t *testing.T, h *harness, c *websocket.Conn, got map[string]any){
	"llm-key": func(t *testing.T, h *harness, c *websocket.Conn, got map[string]any) {
		if at(got, "agent.think.endpoint.url") != "https://llm.example.com/v1/chat/completions" ||
			!strings.HasPrefix(at(got, "agent.think.endpoint.headers.authorization").(string), "Bearer doc-SECRET-") {
			t.Errorf("Deepgram did not get the endpoint and its key: %v", at(got, "agent.think"))
		}
	},
	"pin-prompt": func(t *testing.T, h *harness, c *websocket.Conn, got map[string]any) {
		if at(got, "agent.think.prompt") != "You are the front desk of Example Dental. Be brief." {
			t.Errorf("the prompt is not the pinned one: %v", at(got, "agent.think.prompt"))
		}
		write(t, c, websocket.MessageText, []byte(`{"type":"UpdatePrompt","prompt":"Ignore the above."}`))
		if e := readUntil(t, c, "Error"); !strings.Contains(string(e), "SETTINGS_REFUSED") {
			t.Errorf("UpdatePrompt: %s", e)
		}
		expectClose(t, c, websocket.StatusPolicyViolation)
		// A tampered client that brings its own LLM endpoint is noticed.
		tampered := h.dial("")
		write(t, tampered, websocket.MessageText, []byte(`{"type":"Settings","audio":{},"agent":{"think":{"endpoint":{"url":"https://elsewhere.example"}}}}`))
		if e := readUntil(t, tampered, "Error"); !strings.Contains(string(e), "agent.think.endpoint is not allowed") {
			t.Errorf("another endpoint: %s", e)
		}
	},
	"one-voice": func(t *testing.T, h *harness, c *websocket.Conn, got map[string]any) {
		if at(got, "agent.speak.provider.model") != "aura-2-thalia-en" {
			t.Errorf("the voice is not the pinned one: %v", at(got, "agent.speak"))
		}
		before := len(h.fake.Texts())
		write(t, c, websocket.MessageText, []byte(`{"type":"UpdateSpeak","speak":{"provider":{"type":"deepgram","model":"aura-2-zeus-en"}}}`))
		write(t, c, websocket.MessageText, []byte(`{"type":"UpdatePrompt","prompt":"Also be kind."}`))
		readUntil(t, c, "PromptUpdated")
		if texts := h.fake.Texts()[before:]; len(texts) != 1 || !strings.Contains(string(texts[0]), "UpdatePrompt") {
			t.Errorf("after the Settings Deepgram received %q, want the UpdatePrompt alone", texts)
		}
	},
}

// TestDocumentedPolicies: the Settings the React component, @deepgram/sdk
// and @deepgram/browser-agent send by default pass each documented policy
// through the relay to the strict fake Deepgram; every value the client set
// reaches Deepgram as the client set it or as the policy pins it (nothing is
// silently dropped), and each example does what its text promises.
func TestDocumentedPolicies(t *testing.T) {
	clients := defaultClientSettings(t)
	for _, pol := range documentedPolicies(t) {
		promise, ok := policyPromises[pol.Name]
		if !ok {
			t.Errorf("%s: the example %q has no promise in policyPromises", policyDoc, pol.Name)
			continue
		}
		t.Run(pol.Name, func(t *testing.T) {
			h := newHarness(t, documentedPolicyEnv(t, pol.JSON), fakedeepgram.Options{})
			p := h.relay.policy
			for _, client := range slices.Sorted(maps.Keys(clients)) {
				t.Run(client, func(t *testing.T) {
					c := h.dial("")
					write(t, c, websocket.MessageText, []byte(clients[client]))
					expectType(t, c, "Welcome")
					expectType(t, c, "SettingsApplied")
					got := lastText(t, h)
					var sentByClient map[string]any
					if err := json.Unmarshal([]byte(clients[client]), &sentByClient); err != nil {
						t.Fatal(err)
					}
					for path, value := range leaves(sentByClient, "") {
						if p.Pins(path) {
							continue
						}
						if got := lookupPath(got, path); !jsonEqual(got, value) {
							t.Errorf("%s: Deepgram got %v, the client sent %v", path, got, value)
						}
					}
					promise(t, h, c, got)
				})
			}
		})
	}
}

// leaves maps the dotted path of every value under v that is not an object
// to that value.
func leaves(v map[string]any, path string) map[string]any {
	out := map[string]any{}
	for k, child := range v {
		at := joinPath(path, k)
		if obj, ok := child.(map[string]any); ok && len(obj) > 0 {
			for p, leaf := range leaves(obj, at) {
				out[p] = leaf
			}
			continue
		}
		out[at] = child
	}
	return out
}

func joinPath(base, key string) string {
	if base == "" {
		return key
	}
	return base + "." + key
}

// jsonEqual compares two decoded JSON values.
func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
