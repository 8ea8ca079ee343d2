package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/message"
	"dgrelay/internal/policy"
	"dgrelay/internal/wspipe"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"github.com/coder/websocket"
	"github.com/sethvargo/go-envconfig"
)

const (
	llmSecretName = "projects/p/secrets/llm-key/versions/latest"
	llmKey        = "sk-LLM-SECRET-0123456789"
	voiceKey      = "voice-ENV-SECRET-abcdef"
)

// policyHarness starts a relay whose policy resolves one reference from the
// in-process Secret Manager and one from the environment.
func policyHarness(t *testing.T, onViolation, updates string) *harness {
	t.Helper()
	sm := startFakeSecretManager(t, &fakeSecretManager{payloads: map[string]*secretmanagerpb.SecretPayload{llmSecretName: withCRC(llmKey)}})
	policy := `{
	  "set": {"agent": {"think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"},
	                             "endpoint": {"url": "https://llm.example.com/v1/chat/completions",
	                                          "headers": {"authorization": "Bearer ${secret:` + llmSecretName + `}"}}},
	                    "speak": {"endpoint": {"url": "https://tts.example.com/v1/speak", "headers": {"x-api-key": "${env:VOICE_KEY}"}}}}},
	  "allow": ["audio", "agent.language", "agent.greeting", "agent.think.prompt", "agent.context", "agent.speak.provider"],
	  "messages": ["KeepAlive", "InjectUserMessage", "Fake.Echo", "Fake.Raw", "Fake.Close", "Fake.Send"],
	  "on_violation": "` + onViolation + `"` + updates + `
	}`
	return newHarness(t, map[string]string{
		"SETTINGS_POLICY":             policy,
		"SECRETMANAGER_EMULATOR_HOST": sm,
		"VOICE_KEY":                   voiceKey,
	}, fakedeepgram.Options{EchoAudio: true})
}

// clientSettings is what a browser built: allowed fields, pinned ones it
// tries to change, and its own provider key.
const clientSettings = `{"type":"Settings",
  "audio":{"input":{"encoding":"linear16","sample_rate":16000}},
  "agent":{"language":"en","greeting":"Hi <there> & welcome",
    "think":{"prompt":"Be brief.","provider":{"type":"open_ai","model":"gpt-4o"},
             "endpoint":{"headers":{"authorization":"Bearer sk-browser-key"}}},
    "speak":{"provider":{"type":"deepgram","model":"aura-2-thalia-en"}},
    "listen":{"provider":{"type":"deepgram","model":"nova-3"}}},
  "experimental":true}`

// lastText returns the last text message the fake received, as JSON.
func lastText(t *testing.T, h *harness) map[string]any {
	t.Helper()
	texts := h.fake.Texts()
	if len(texts) == 0 {
		t.Fatal("upstream received no text message")
	}
	var m map[string]any
	if err := json.Unmarshal(texts[len(texts)-1], &m); err != nil {
		t.Fatalf("upstream received %q: %v", texts[len(texts)-1], err)
	}
	return m
}

func at(m map[string]any, path string) any { return lookupPath(m, path) }

// policyReference is the policy's reference syntax, for the tests that
// read the documented policies.
var policyReference = policy.Reference

// lookupPath is the policy's own reading of a dotted path.
var lookupPath = policy.ValueAt

func TestPolicyStrip(t *testing.T) {
	h := policyHarness(t, "strip", "")
	c := h.dial("service=agent")
	write(t, c, websocket.MessageText, []byte(clientSettings))
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	got := lastText(t, h)
	for path, want := range map[string]any{
		"type":                       "Settings",
		"audio.input.encoding":       "linear16", // allowed: kept
		"agent.language":             "en",       // allowed: kept
		"agent.greeting":             "Hi <there> & welcome",
		"agent.think.prompt":         "Be brief.",   // allowed: kept
		"agent.think.provider.model": "gpt-4o-mini", // pinned: replaced, not stripped
		"agent.think.endpoint.url":   "https://llm.example.com/v1/chat/completions",
		"agent.think.endpoint.headers.authorization": "Bearer " + llmKey, // set: the server's key
		"agent.speak.provider.model":                 "aura-2-thalia-en", // allowed
		"agent.speak.endpoint.headers.x-api-key":     voiceKey,           // set from ${env:}
	} {
		if v := at(got, path); v != want {
			t.Errorf("upstream %s = %v, want %v", path, v, want)
		}
	}
	for _, path := range []string{"agent.listen", "experimental"} {
		if v := at(got, path); v != nil {
			t.Errorf("disallowed %s reached upstream: %v", path, v)
		}
	}
	if bytes.Contains(bytes.Join(h.fake.Texts(), nil), []byte("sk-browser-key")) {
		t.Error("the browser's own provider key reached upstream")
	}

	// Audio is untouched (the fake echoes it), and other text messages
	// pass as the policy read them, encoded again.
	audio := []byte{0, 1, 2, 250, 255}
	write(t, c, websocket.MessageBinary, audio)
	if typ, data := read(t, c); typ != websocket.MessageBinary || !bytes.Equal(data, audio) {
		t.Fatalf("audio came back as %v %v", typ, data)
	}
	inject := []byte(`{ "type" : "InjectUserMessage",  "content":"change Settings <now>" }`)
	write(t, c, websocket.MessageText, inject)
	expectType(t, c, "ConversationText") // Deepgram's turn begins
	if got := string(h.fake.Texts()[len(h.fake.Texts())-1]); got != `{"content":"change Settings <now>","type":"InjectUserMessage"}` {
		t.Fatalf("a non-Settings text message was not passed as the policy read it: %s", got)
	}

	// A provider echoing a secret back does not hand it to the browser.
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Echo","text":"key was `+llmKey+`"}`))
	if data := readUntil(t, c, "Fake.Echo"); bytes.Contains(data, []byte(llmKey)) || !bytes.Contains(data, []byte("[redacted]")) {
		t.Fatalf("a secret reached the client: %s", data)
	}
	// A type the policy strips is logged by its name, cleaned of any
	// secret the client spells in it.
	write(t, c, websocket.MessageText, []byte(`{"type":"`+llmKey+`"}`))
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Echo"}`))
	readUntil(t, c, "Fake.Echo")
	c.Close(websocket.StatusNormalClosure, "")
	h.relay.drain(time.Second)

	logs := h.logs.String()
	if !strings.Contains(logs, `"paths":["(message type [redacted])"]`) {
		t.Errorf("the stripped type is not logged, redacted:\n%s", logs)
	}
	if !strings.Contains(logs, `"paths":["agent.listen","experimental"]`) {
		t.Errorf("the stripped paths are not logged:\n%s", logs)
	}
	for _, secret := range []string{llmKey, voiceKey, "sk-browser-key"} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret is in the logs: %s", secret)
		}
	}
	m := httptest.NewServer(h.relay.metricsServer().Handler)
	defer m.Close()
	if body := scrape(t, m.URL+"/metrics"); strings.Contains(body, llmKey) || !strings.Contains(body, `dgrelay_settings_policy_violations_total{action="strip"} 3`) {
		t.Errorf("metrics: %s", body)
	}
}

func TestPolicyRefuse(t *testing.T) {
	h := policyHarness(t, "refuse", "")
	c := h.dial("")
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(clientSettings))
	errFrame := expectType(t, c, "Error")
	if errFrame["code"] != "SETTINGS_REFUSED" || errFrame["description"] != "agent.listen is not allowed" {
		t.Fatalf("Error frame %v", errFrame)
	}
	if ce := expectClose(t, c, websocket.StatusPolicyViolation); ce.Reason != "settings refused" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure {
		t.Fatalf("upstream got %+v", got)
	}
	if len(h.fake.Texts()) != 0 {
		t.Fatalf("the refused Settings reached upstream: %q", h.fake.Texts())
	}

	// Settings within the allow list pass.
	c = h.dial("")
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","audio":{"input":{"encoding":"linear16"}},"agent":{"think":{"prompt":"x"}}}`))
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	if at(lastText(t, h), "agent.think.endpoint.headers.authorization") != "Bearer "+llmKey {
		t.Error("the set values were not injected")
	}
}

func TestPolicyUpdates(t *testing.T) {
	updates := `, "updates": {"UpdatePrompt": true, "UpdateSpeak": false}`
	t.Run("strip", func(t *testing.T) {
		h := policyHarness(t, "strip", updates)
		c := h.agentSession("")
		for _, msg := range []string{
			`{"type":"UpdateSpeak","speak":{"provider":{"type":"deepgram","model":"aura-2-zeus-en"}}}`,
			`{"type":"UpdateThink","think":{"provider":{"type":"open_ai","model":"o3"}}}`,
			`{"type":"UpdatePrompt","prompt":"Be kind."}`,
		} {
			write(t, c, websocket.MessageText, []byte(msg))
		}
		// Only the allowed update arrives; Deepgram's ack proves the order.
		expectType(t, c, "PromptUpdated")
		texts := h.fake.Texts()
		if len(texts) != 2 || at(lastText(t, h), "prompt") != "Be kind." {
			t.Fatalf("upstream received %q", texts)
		}
	})
	t.Run("refuse", func(t *testing.T) {
		h := policyHarness(t, "refuse", updates)
		c := h.agentSession("")
		write(t, c, websocket.MessageText, []byte(`{"type":"UpdateSpeak","speak":{"provider":{"model":"x"}}}`))
		if e := expectType(t, c, "Error"); e["description"] != "UpdateSpeak is not allowed" {
			t.Fatalf("Error frame %v", e)
		}
		expectClose(t, c, websocket.StatusPolicyViolation)
	})
}

// TestPolicyLargeSettings: a Settings longer than the copy buffer (a long
// prompt) is still checked whole.
func TestPolicyLargeSettings(t *testing.T) {
	h := policyHarness(t, "strip", "")
	c := h.dial("")
	prompt := strings.Repeat("You are helpful. ", 8000) // ~136 KB
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","audio":{},"agent":{"think":{"prompt":"`+prompt+`","provider":{"model":"x"}}}}`))
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	got := lastText(t, h)
	if at(got, "agent.think.prompt") != prompt || at(got, "agent.think.provider.model") != "gpt-4o-mini" {
		t.Fatal("the large Settings was not checked whole")
	}
}

func TestPolicyStartErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "policy.json")
	os.WriteFile(good, []byte(`{"set":{"agent":{"language":"en"}}}`), 0o600)
	sm := startFakeSecretManager(t, &fakeSecretManager{})
	cases := []struct {
		policy, want string
	}{
		{`{"set":`, "SETTINGS_POLICY: not a valid policy"},
		{`{"sett":{}}`, "unknown field"},
		{`{"on_violation":"ignore"}`, "on_violation"},
		{`{"updates":{"UpdateVoice":true}}`, "UpdateVoice"},
		{`{"allow":["agent..think"]}`, "agent..think"},
		{`{"set":{"type":"Other"}}`, "type"},
		{`{"set":{"a":{"b":"${env:NOT_SET_ANYWHERE}"}}}`, "set.a.b: ${env:NOT_SET_ANYWHERE} is not set"},
		{`{"set":{"a":"${secret:projects/p/secrets/missing/versions/1}"}}`, "projects/p/secrets/missing/versions/1"},
		{"@" + filepath.Join(dir, "absent.json"), "absent.json"},
	}
	for _, tc := range cases {
		logs := &lockedBuffer{}
		env := map[string]string{"DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true", "PORT": freePort(t),
			"METRICS_PORT": "0", "SETTINGS_POLICY": tc.policy, "SECRETMANAGER_EMULATOR_HOST": sm}
		if code := run(context.Background(), envconfig.MapLookuper(env), logs, nil); code == 0 {
			t.Errorf("%s: started", tc.policy)
		}
		if !strings.Contains(logs.String(), tc.want) {
			t.Errorf("%s: the error does not say %q: %s", tc.policy, tc.want, logs)
		}
	}
	if _, err := loadPolicy(context.Background(), "@"+good, nil, nil); err != nil {
		t.Errorf("@path: %v", err)
	}
}

// TestPolicyStripLogBounded: the paths a client chose go to the log bounded,
// in number and in length, however many it sends; the metric still counts
// every one. Unbounded, a 1 MB Settings made a 1 MB log line.
func TestPolicyStripLogBounded(t *testing.T) {
	h := policyHarness(t, "strip", "")
	c := h.dial("")
	const keys = 4000
	var b strings.Builder
	// The first path in sorted order is cut inside a 3-byte character.
	b.WriteString(`{"type":"Settings","audio":{},"agent":{"` + strings.Repeat("€", 100) + `":1}`)
	for i := range keys {
		fmt.Fprintf(&b, `,"x%05d%s":1`, i, strings.Repeat("k", 200))
	}
	b.WriteString("}")
	write(t, c, websocket.MessageText, []byte(b.String()))
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	c.Close(websocket.StatusNormalClosure, "")
	h.relay.drain(time.Second)

	line := grepLines(h.logs.String(), `"message":"settings policy: stripped"`)
	if len(line) > 4<<10 {
		t.Fatalf("the stripped line is %d bytes", len(line))
	}
	var entry struct {
		Paths []string `json:"paths"`
		Total int      `json:"paths_total"`
	}
	if err := json.Unmarshal([]byte(line), &entry); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if entry.Total != keys+1 || len(entry.Paths) != maxLoggedPaths {
		t.Errorf("%d paths logged of %d, want %d of %d", len(entry.Paths), entry.Total, maxLoggedPaths, keys+1)
	}
	for _, p := range entry.Paths {
		if len(p) > maxLoggedPathBytes+len("…") || !utf8.ValidString(p) || !strings.HasSuffix(p, "…") {
			t.Errorf("path %q (%d bytes) is not cut at a character to %d bytes and marked", p, len(p), maxLoggedPathBytes)
		}
	}
	m := httptest.NewServer(h.relay.metricsServer().Handler)
	defer m.Close()
	if body := scrape(t, m.URL+"/metrics"); !strings.Contains(body, fmt.Sprintf(`dgrelay_settings_policy_violations_total{action="strip"} %d`, keys+1)) {
		t.Errorf("the metric does not count every path:\n%s", grepLines(body, "policy_violations"))
	}
}

// TestPolicyRefuseLogBounded: the one path a refusal logs is cut as well.
func TestPolicyRefuseLogBounded(t *testing.T) {
	h := policyHarness(t, "refuse", "")
	c := h.dial("")
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","`+strings.Repeat("k", 500<<10)+`":1}`))
	expectType(t, c, "Error")
	expectClose(t, c, websocket.StatusPolicyViolation)
	h.relay.drain(time.Second)
	if line := grepLines(h.logs.String(), `"message":"settings policy: refused"`); line == "" || len(line) > 1<<10 {
		t.Fatalf("the refused line is %d bytes", len(line))
	}
}

// TestPolicyFunctionHeaders: through the relay, Deepgram receives a
// function endpoint's header resolved, and the value echoed back reaches the
// client scrubbed.
func TestPolicyFunctionHeaders(t *testing.T) {
	const fnKey = "fn-ENV-SECRET-0123456789"
	h := newHarness(t, map[string]string{
		"SETTINGS_POLICY": `{"set": {"agent": {"think": {"functions": [{"name": "lookup", "description": "d",
		  "endpoint": {"url": "https://fn.example.com", "method": "post", "headers": {"authorization": "Bearer ${env:FN_KEY}"}}}]}}}}`,
		"FN_KEY": fnKey,
	}, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","audio":{},"agent":{"think":{"prompt":"p"}}}`))
	expectType(t, c, "SettingsApplied")
	fn, _ := at(lastText(t, h), "agent.think.functions").([]any)
	if len(fn) != 1 || lookupPath(fn[0].(map[string]any), "endpoint.headers.authorization") != "Bearer "+fnKey {
		t.Fatalf("Deepgram did not receive the resolved header: %v", fn)
	}
	// Deepgram repeats the user's words (ConversationText): the value must
	// not reach the client.
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"`+fnKey+`"}`))
	if data := readUntil(t, c, "ConversationText"); bytes.Contains(data, []byte(fnKey)) || !bytes.Contains(data, []byte("[redacted]")) {
		t.Fatalf("the function's key reached the client unscrubbed: %s", data)
	}
}

// policyBypasses are client messages that a decision on raw bytes would
// have passed unparsed: Settings and an Update behind an escape, a second
// type key, a byte order mark, nesting past the bound, and a Settings after
// a harmless first value.
var policyBypasses = []struct{ name, msg, why string }{
	{"escaped Settings", `{"type":"\u0053ettings","audio":{},"agent":{"listen":{"provider":{"model":"mine"}}}}`, "agent.listen is not allowed"},
	{"escaped Update", `{"type":"\u0055pdateSpeak","speak":{"provider":{"model":"mine"}}}`, "UpdateSpeak is not allowed"},
	{"duplicate type", `{"type":"KeepAlive","type":"Settings","agent":{"listen":{"provider":{"model":"mine"}}}}`, `message refused: duplicate key "type"`},
	{"duplicate nested key", `{"type":"Settings","agent":{"think":{"prompt":"a","prompt":"mine"}}}`, `message refused: duplicate key "prompt"`},
	{"byte order mark", "\ufeff" + `{"type":"Settings","agent":{"listen":{"provider":{"model":"mine"}}}}`, "message refused: not JSON"},
	{"too deep", `{"type":"Settings","agent":{"think":{"prompt":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}}}`, "message refused: nested deeper than 64"},
	{"two values", `{"type":"KeepAlive"} {"type":"Settings","agent":{"listen":{"provider":{"model":"mine"}}}}`, "message refused: more than one JSON value"},
	{"no type", `{"agent":{"listen":{"provider":{"model":"mine"}}}}`, "message refused: no string type"},
	{"UpdateListen", `{"type":"UpdateListen","listen":{"provider":{"model":"mine"}}}`, "UpdateListen is not allowed"},
	{"a type the policy does not know", `{"type":"UpdateVoice","agent":{"listen":{"provider":{"model":"mine"}}}}`, `message type "UpdateVoice" is not allowed`},
	{"a dotted key", `{"type":"Settings","audio":{},"agent":{"listen.provider":{"model":"mine"}}}`, "agent.listen.provider is not allowed"},
	{"an empty key", `{"type":"Settings","audio":{},"":{"agent":{"listen":{"provider":{"model":"mine"}}}}}`, " is not allowed"},
	{"too many values", `{"type":"Settings","agent":{"context":[` + strings.Repeat("0,", 2*message.MaxValues) + `0]},"x":"mine"}`, "message refused: more than 150"},
}

// TestPolicyBypassRefused: under refuse, each bypass ends its session with
// SETTINGS_REFUSED and 1008, and Deepgram receives none of it.
func TestPolicyBypassRefused(t *testing.T) {
	h := policyHarness(t, "refuse", `, "updates": {"UpdateSpeak": false}`)
	for _, tc := range policyBypasses {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageText, []byte(tc.msg))
		e := expectType(t, c, "Error")
		if desc, _ := e["description"].(string); e["code"] != "SETTINGS_REFUSED" || !strings.HasPrefix(desc, tc.why) {
			t.Errorf("%s: Error frame %v, want %q", tc.name, e, tc.why)
		}
		expectClose(t, c, websocket.StatusPolicyViolation)
		h.upstreamClosed()
	}
	if texts := h.fake.Texts(); len(texts) != 0 {
		t.Fatalf("Deepgram received %q", texts)
	}
}

// TestPolicyBypassStripped: under strip, each bypass is dropped or stripped
// and the session goes on; what reaches Deepgram is only what the policy
// read, in the form it encoded. One session each: Deepgram takes one
// Settings a session.
func TestPolicyBypassStripped(t *testing.T) {
	h := policyHarness(t, "strip", `, "updates": {"UpdateSpeak": false}`)
	settings := 0
	for i, tc := range policyBypasses {
		before := len(h.fake.Texts())
		c := h.dial("")
		write(t, c, websocket.MessageText, []byte(tc.msg))
		// A test control behind it: once it is back, the bypass has been
		// judged and, if anything of it went, received.
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Echo","n":`+strconv.Itoa(i)+`}`))
		readUntil(t, c, "Fake.Echo")
		for _, txt := range h.fake.Texts()[before:] {
			switch {
			case bytes.Contains(txt, []byte("Fake.")):
			case strings.Contains(string(txt), "mine") || strings.Contains(string(txt), `\u`):
				t.Errorf("%s: Deepgram received %s", tc.name, txt)
			case strings.HasPrefix(string(txt), "{") && bytes.Contains(txt, []byte(`"type":"Settings"`)):
				settings++
			default:
				t.Errorf("%s: Deepgram received %s", tc.name, txt)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
		h.settled() // one session at a time: the per-user cap holds
	}
	// The escaped Settings, and those with a dotted or an empty key, are
	// Settings: stripped, pinned, applied.
	if settings != 3 {
		t.Errorf("Deepgram received %d Settings, want the three stripped ones", settings)
	}
	// A message that passes goes on as the policy encoded it.
	c := h.agentSession("")
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"\u003chi\u003e"}`))
	expectType(t, c, "ConversationText")
	if got := string(lastTextRaw(t, h)); got != `{"content":"<hi>","type":"InjectUserMessage"}` {
		t.Errorf("Deepgram received %s, want the message as the policy encoded it", got)
	}
}

// readUntil reads until a text message of type typ comes, and returns it.
func readUntil(t *testing.T, c *websocket.Conn, typ string) []byte {
	t.Helper()
	for {
		mt, data := read(t, c)
		var m struct{ Type string }
		if mt == websocket.MessageText && json.Unmarshal(data, &m) == nil && m.Type == typ {
			return data
		}
	}
}

// lastTextRaw is the last text message Deepgram received that is not a
// test control.
func lastTextRaw(t *testing.T, h *harness) []byte {
	t.Helper()
	texts := h.fake.Texts()
	for i := len(texts) - 1; i >= 0; i-- {
		if !bytes.Contains(texts[i], []byte(`"Fake.`)) {
			return texts[i]
		}
	}
	t.Fatal("Deepgram received no text message")
	return nil
}

// TestPolicyFragmentedSettings: Settings sent in fragments is read whole by
// the policy and reaches Deepgram as one message, with the policy applied.
func TestPolicyFragmentedSettings(t *testing.T) {
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}},"allow":["audio","agent.think.prompt"],"on_violation":"strip"}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	c := h.rawDial("")
	settings := `{"type":"Settings","audio":{},"agent":{"think":{"provider":{"model":"mine"},"prompt":"be brief"}}}`
	c.trickle(clientFrame(0x01, []byte(settings[:20])))
	c.trickle(clientFrame(0x89, []byte("ping")))
	c.trickle(clientFrame(0x80, []byte(settings[20:])))
	for {
		op, p := c.read()
		if op == wspipe.OpText && strings.Contains(string(p), "SettingsApplied") {
			break
		}
	}
	var got string
	for _, txt := range h.fake.Texts() {
		if strings.Contains(string(txt), `"Settings"`) {
			got = string(txt)
		}
	}
	if !strings.Contains(got, `"model":"pinned"`) || !strings.Contains(got, `"prompt":"be brief"`) || strings.Contains(got, "mine") {
		t.Fatalf("Deepgram got %s", got)
	}
}

// TestPolicyStripLinesPerSession: a client sending many small messages the
// policy strips writes a bounded number of log lines, however many it sends;
// the metric counts every one.
func TestPolicyStripLinesPerSession(t *testing.T) {
	h := policyHarness(t, "strip", "")
	c := h.agentSession("")
	for range 200 {
		write(t, c, websocket.MessageText, []byte(`x`))
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Echo"}`))
	readUntil(t, c, "Fake.Echo")
	if n := strings.Count(h.logs.String(), `"settings policy: stripped`); n != maxStrippedLines+1 {
		t.Errorf("%d stripped lines for 200 messages", n)
	}
	if body := scrapeHandler(t, h); !strings.Contains(body, `dgrelay_settings_policy_violations_total{action="strip"} 200`) {
		t.Errorf("the metric does not count all 200")
	}
}

// TestPolicyTextRate: under a policy, a user whose sessions together send
// text faster than clientTextRate after a burst of one whole message ends
// the session that passes it (1008) instead of keeping the parser busy; a
// new session brings no fresh burst.
func TestPolicyTextRate(t *testing.T) {
	// The fake echoes Fake.Echo at any time: the policy lets it pass.
	policy := `{"set":{"agent":{"think":{"provider":{"model":"pinned"}}}},"messages":["Fake.Echo"]}`
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy, "MAX_MESSAGE_BYTES": "60000"}, fakedeepgram.Options{})
	msg := clientFrame(0x81, []byte(`{"type":"Fake.Echo","content":"`+strings.Repeat("x", 9000)+`"}`))
	first := h.rawDial("") // both sessions are 127.0.0.1's: one user
	first.send(bytes.Repeat(msg, 6))
	for range 6 { // 54 kB, within the burst
		if op, _ := first.read(); op != wspipe.OpText {
			t.Fatalf("opcode %x", op)
		}
	}
	second := h.rawDial("")
	second.send(bytes.Repeat(msg, 6)) // another 54 kB at once: past what is left
	if reason := second.expectClose(websocket.StatusPolicyViolation); reason != "too much text" {
		t.Fatalf("reason %q", reason)
	}
	second.send(clientFrame(0x88, wspipe.ClosePayload(int(websocket.StatusPolicyViolation), "")))
	if got := h.upstreamClosed(); got.Reason != "client sent too much text" {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestPolicyTranscriptionThroughRelay: item 1 end to end. Under either
// policy mode a transcription session keeps its Finalize (the final
// transcript comes) and its CloseStream (Metadata, then Deepgram's normal
// close); before, strip dropped both and refuse ended the session.
func TestPolicyTranscriptionThroughRelay(t *testing.T) {
	for _, onViolation := range []string{"strip", "refuse"} {
		t.Run(onViolation, func(t *testing.T) {
			h := newHarness(t, map[string]string{"SETTINGS_POLICY": `{"allow":["audio"],"on_violation":"` + onViolation + `"}`}, fakedeepgram.Options{})
			c := h.dial("service=transcription&model=nova-3&encoding=linear16&sample_rate=16000")
			write(t, c, websocket.MessageBinary, make([]byte, 3200))
			readUntil(t, c, "Results")
			write(t, c, websocket.MessageText, []byte(`{"type":"Finalize"}`))
			for {
				var r struct {
					FromFinalize bool `json:"from_finalize"`
				}
				if json.Unmarshal(readUntil(t, c, "Results"), &r) == nil && r.FromFinalize {
					break
				}
			}
			write(t, c, websocket.MessageText, []byte(`{"type":"CloseStream"}`))
			readUntil(t, c, "Metadata")
			expectClose(t, c, websocket.StatusNormalClosure)
		})
	}
}
