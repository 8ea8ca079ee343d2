package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// receivedSettings is the tags of the Settings the fake received, and the
// rest of what it received after it, as it came.
func receivedSettings(t *testing.T, h *harness) (tags []any, settings map[string]any, later []string) {
	t.Helper()
	for _, text := range h.fake.Texts() {
		var m map[string]any
		if json.Unmarshal(text, &m) == nil && m["type"] == "Settings" && settings == nil {
			settings = m
			tags, _ = m["tags"].([]any)
			continue
		}
		if settings != nil {
			later = append(later, string(text))
		}
	}
	if settings == nil {
		t.Fatalf("Deepgram received no Settings: %q", h.fake.Texts())
	}
	return tags, settings, later
}

// TestUsageTagAgent: USAGE_TAG=user adds the user's tag to the agent's
// Settings, keeps the client's own tags but for one claiming to be the
// relay's, names the same hash as Redis and the log line, and reads nothing
// after the Settings.
func TestUsageTagAgent(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"USAGE_TAG": "user"}), fakedeepgram.Options{})
	c := h.dial("token=" + userToken(t, "nina"))
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","tags":["app-v2","dgrelay-user-0123456789abcdef0123456789abcdef"],"audio":{},"agent":{"language":"en"}}`))
	expectType(t, c, "SettingsApplied")
	// Not the JSON the relay would write: it must arrive as sent, unread.
	after := `{ "type" : "InjectUserMessage", "content":"hi <&>" }`
	write(t, c, websocket.MessageText, []byte(after))
	expectType(t, c, "ConversationText") // the fake agent's turn
	c.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
	h.settled()

	want := usageTagPrefix + identityKey(h.relay.identityHashKey, "sub:nina")
	tags, settings, later := receivedSettings(t, h)
	if !reflect.DeepEqual(tags, []any{"app-v2", want}) {
		t.Errorf("tags %v, want [app-v2 %s]", tags, want)
	}
	if settings["agent"].(map[string]any)["language"] != "en" {
		t.Errorf("the Settings lost the client's fields: %v", settings)
	}
	if !reflect.DeepEqual(later, []string{after}) {
		t.Errorf("after the Settings Deepgram received %q, want %q", later, after)
	}
	if got := sessionEnd(t, h.logs.String())["usage_tag"]; got != want {
		t.Errorf("the session's log line gives usage_tag %v, want %s", got, want)
	}
	if strings.Contains(want, "nina") {
		t.Error("the tag holds the sub")
	}
}

// TestUsageTagWithPolicy: under a Settings policy the tag is added after the
// policy: a pinned tags list keeps its tags and gains the user's.
func TestUsageTagWithPolicy(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"USAGE_TAG": "user", "SETTINGS_POLICY": `{"set":{"tags":["pinned"]}}`}), fakedeepgram.Options{})
	c := h.dial("token=" + userToken(t, "omar"))
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","tags":["client"],"audio":{},"agent":{}}`))
	expectType(t, c, "SettingsApplied")
	tags, _, _ := receivedSettings(t, h)
	if want := []any{"pinned", usageTagPrefix + identityKey(h.relay.identityHashKey, "sub:omar")}; !reflect.DeepEqual(tags, want) {
		t.Errorf("tags %v, want %v", tags, want)
	}
}

// TestUsageTagTranscription: transcription gets the tag as a query
// parameter, after the client's own, less any claiming to be the relay's.
func TestUsageTagTranscription(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"USAGE_TAG": "user"}), fakedeepgram.Options{})
	h.dial("service=transcription&model=nova-3&tag=app&tag=dgrelay-user-spoof&token=" + userToken(t, "pia"))
	hs := h.fake.Handshakes()
	want := "model=nova-3&tag=app&tag=" + usageTagPrefix + identityKey(h.relay.identityHashKey, "sub:pia")
	if len(hs) != 1 || hs[0].RawQuery != want {
		t.Fatalf("Deepgram was asked %v, want the query %s", hs, want)
	}
}

// TestUsageTagOff: by default nothing is added and the Settings goes on as
// it came.
func TestUsageTagOff(t *testing.T) {
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})
	h.dial("service=transcription&tag=app&token=" + userToken(t, "quinn")) // listen sends nothing first
	agent := h.dial("token=" + userToken(t, "quinn"))
	expectType(t, agent, "Welcome")
	settings := `{"type":"Settings", "tags":["app"], "audio":{}, "agent":{}}`
	write(t, agent, websocket.MessageText, []byte(settings))
	expectType(t, agent, "SettingsApplied")
	if hs := h.fake.Handshakes(); hs[0].RawQuery != "tag=app" {
		t.Errorf("transcription query %q", hs[0].RawQuery)
	}
	if texts := h.fake.Texts(); len(texts) != 1 || string(texts[0]) != settings {
		t.Errorf("Deepgram received %q, want the Settings as sent", texts)
	}
}

// TestUsageTagUnreadableSettings: a first message that more than one parser
// could read differently (a repeated key could show Deepgram a tags list the
// relay did not see) is refused, as a policy refuses it.
func TestUsageTagUnreadableSettings(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"USAGE_TAG": "user"}), fakedeepgram.Options{})
	c := h.dial("token=" + userToken(t, "rosa"))
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","tags":["dgrelay-user-x"],"tags":[]}`))
	if e := expectType(t, c, "Error"); e["code"] != "SETTINGS_REFUSED" || e["description"] != `message refused: duplicate key "tags"` {
		t.Errorf("Error frame %v", e)
	}
	expectClose(t, c, websocket.StatusPolicyViolation)
	h.upstreamClosed()
	if len(h.fake.Texts()) != 0 {
		t.Errorf("Deepgram received %q", h.fake.Texts())
	}
}

// TestUsageTagSettingsFirst: without a policy the relay reads the first
// text message only, so a first message that is not the Settings is
// refused (Deepgram refuses it too: NON_SETTINGS_MESSAGE_BEFORE_SETTINGS);
// passed on, it would let the Settings after it go unread, untagged and
// carrying a tag of the relay's kind the client chose.
func TestUsageTagSettingsFirst(t *testing.T) {
	// Lenient: Deepgram would end the session at the audio before Settings
	// (NON_SETTINGS_MESSAGE_BEFORE_SETTINGS); what is checked is the
	// relay's own refusal of the Settings after it.
	h := newHarness(t, authEnv(map[string]string{"USAGE_TAG": "user"}), fakedeepgram.Options{Lenient: true})
	c := h.dial("token=" + userToken(t, "sam"))
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageBinary, []byte("audio, not read"))
	if typ, data := read(t, c); typ != websocket.MessageBinary || string(data) != "audio, not read" {
		t.Fatalf("the fake echoed %v %q", typ, data)
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"KeepAlive"}`))
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","tags":["dgrelay-user-0123456789abcdef0123456789abcdef"]}`))
	if e := expectType(t, c, "Error"); e["code"] != "SETTINGS_REFUSED" || e["description"] != "message refused: the first message must be Settings" {
		t.Errorf("Error frame %v", e)
	}
	expectClose(t, c, websocket.StatusPolicyViolation)
	h.upstreamClosed()
	if texts := h.fake.Texts(); len(texts) != 0 {
		t.Errorf("Deepgram received %q", texts)
	}
}

// TestUsageTagSecondSettings (issue 22): without a policy the relay reads
// only the first text message, and tags it. A second Settings, which could
// carry another user's tag, goes on unread: Deepgram takes one Settings a
// session and refuses the next (docs: voice-agent-errors-warnings,
// SETTINGS_ALREADY_APPLIED), as the strict fake does, so only the tagged
// one is ever applied. Reading every later message to refuse it first
// would cost a parse per message for what Deepgram refuses anyway.
func TestUsageTagSecondSettings(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"USAGE_TAG": "user"}), fakedeepgram.Options{})
	c, _, err := websocket.Dial(t.Context(), h.wsURL+"?token="+userToken(t, "alice"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	applySettings(t, c)
	write(t, c, websocket.MessageText, []byte(`{"type":"Settings","audio":{},"agent":{},"tags":["dgrelay-user-someone-else"]}`))
	if e := expectType(t, c, "Error"); e["code"] != fakedeepgram.ErrSettingsApplied {
		t.Fatalf("Deepgram answered %v", e)
	}
	texts := h.fake.Texts()
	if len(texts) != 2 || !strings.Contains(string(texts[0]), `"dgrelay-user-`) || strings.Contains(string(texts[0]), "someone-else") {
		t.Fatalf("Deepgram received %q", texts)
	}
}
