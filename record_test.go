package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// resumed is the carried Settings of r, decoded.
func resumed(t *testing.T, r *conversationRecord) map[string]any {
	t.Helper()
	b, _, err := r.resumeSettings()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func thinkOf(m map[string]any) map[string]any {
	return m["agent"].(map[string]any)["think"].(map[string]any)
}

// TestRecordUpdates: acknowledged updates are laid over the Settings as
// Deepgram applies them; a new think block supersedes the prompts added
// before it; an update never acknowledged is not.
func TestRecordUpdates(t *testing.T) {
	r := newConversationRecord(1 << 16)
	r.sent("Settings", []byte(`{"type":"Settings","agent":{"greeting":"hi","think":{"prompt":"base","provider":{"type":"x"}}}}`), 0)
	r.sent("UpdatePrompt", []byte(`{"type":"UpdatePrompt","prompt":"A"}`), 0)
	r.acknowledged("PromptUpdated")
	if p := thinkOf(resumed(t, r))["prompt"]; p != "base\nA" {
		t.Fatalf("prompt %q", p)
	}
	r.sent("UpdateThink", []byte(`{"type":"UpdateThink","think":{"prompt":"new","provider":{"type":"y"}}}`), 0)
	r.sent("UpdatePrompt", []byte(`{"type":"UpdatePrompt","prompt":"B"}`), 0)
	r.sent("UpdatePrompt", []byte(`{"type":"UpdatePrompt","prompt":"never acknowledged"}`), 0)
	r.acknowledged("ThinkUpdated")
	r.acknowledged("PromptUpdated")
	m := resumed(t, r)
	if think := thinkOf(m); think["prompt"] != "new\nB" || think["provider"].(map[string]any)["type"] != "y" {
		t.Fatalf("think %v", think)
	}
	if _, ok := m["agent"].(map[string]any)["greeting"]; ok {
		t.Fatal("the greeting is carried")
	}
	if msgs := m["agent"].(map[string]any)["context"].(map[string]any)["messages"]; msgs == nil {
		t.Fatal("messages is null with no turn: the spec's type is an array")
	}
}

// TestRecordForgetsUpdatesOfTheOldConnection: an update sent to the
// connection a move left, never acknowledged, is not laid over the Settings
// by the new connection's acknowledgement of another.
func TestRecordForgetsUpdatesOfTheOldConnection(t *testing.T) {
	r := newConversationRecord(1 << 16)
	r.sent("Settings", []byte(`{"type":"Settings","agent":{"think":{"prompt":"base"}}}`), 0)
	r.sent("UpdatePrompt", []byte(`{"type":"UpdatePrompt","prompt":"GHOST"}`), 0)
	r.moved(1, false)
	r.sent("UpdatePrompt", []byte(`{"type":"UpdatePrompt","prompt":"REAL"}`), 1)
	r.acknowledged("PromptUpdated")
	if p := thinkOf(resumed(t, r))["prompt"]; p != "base\nREAL" {
		t.Fatalf("prompt %q, want the acknowledged update only", p)
	}
	r.moved(2, true)
	if _, _, err := r.resumeSettings(); err == nil {
		t.Fatal("a move that dropped a client text message left the record trusted")
	}
}

// TestRecordKeepsPriorTurns: the turns the client's own Settings gave stay
// when Deepgram's History starts, and go first past the bound.
func TestRecordKeepsPriorTurns(t *testing.T) {
	r := newConversationRecord(400)
	r.sent("Settings", []byte(`{"type":"Settings","agent":{"context":{"messages":[`+
		`{"type":"History","role":"user","content":"PRIOR-USER"},{"type":"History","role":"assistant","content":"PRIOR-ASSISTANT"},`+
		`{"type":"History","role":"system","content":"not a documented role"}]}}}`), 0)
	r.heard("ConversationText", []byte(`{"type":"ConversationText","role":"user","content":"hello"}`))
	r.heard("History", []byte(`{"type":"History","role":"user","content":"hello"}`))
	b, n, err := r.resumeSettings()
	if err != nil || n != 3 || !strings.Contains(string(b), "PRIOR-USER") || strings.Contains(string(b), "not a documented role") {
		t.Fatalf("%d turns carried (%v): %s", n, err, b)
	}
	for i := range 10 {
		r.heard("History", []byte(`{"type":"History","role":"assistant","content":"turn `+strings.Repeat("x", i)+`"}`))
	}
	b, _, _ = r.resumeSettings()
	if strings.Contains(string(b), "PRIOR-USER") || r.turnBytes > 400 || r.dropped == 0 {
		t.Fatalf("past the bound the oldest turns stay (%d bytes, %d dropped): %s", r.turnBytes, r.dropped, b)
	}
}

// TestRecordAcknowledgementIsCheap: an acknowledgement parses nothing,
// however big the Settings: a client cannot make the relay re-read a large
// Settings with every small update.
func TestRecordAcknowledgementIsCheap(t *testing.T) {
	r := newConversationRecord(1 << 16)
	big := `{"type":"Settings","agent":{"think":{"prompt":"` + strings.Repeat("a", 100<<10) + `"}}}`
	r.sent("Settings", []byte(big), 0)
	update := []byte(`{"type":"UpdateListen","listen":{"provider":{"type":"deepgram"}}}`)
	allocs := testing.AllocsPerRun(100, func() {
		r.sent("UpdateListen", update, 0)
		r.acknowledged("ListenUpdated")
	})
	if allocs > 3 {
		t.Fatalf("an update and its acknowledgement cost %v allocations", allocs)
	}
	if r.lost != "" {
		t.Fatalf("lost: %s", r.lost)
	}
}

// TestRecordReadsEscapedKinds: a client message whose type is written with
// escapes is what Deepgram reads it as (it decodes them), so the record
// follows it; one no parser agrees on leaves the record unsure.
func TestRecordReadsEscapedKinds(t *testing.T) {
	c := newContinuation(1 << 16)
	c.followClient([]byte(`{"type":"Settings","agent":{"think":{"prompt":"base"}}}`))
	c.followClient([]byte(`{"type":"\u0055pdatePrompt","prompt":"ESCAPED"}`))
	c.record.acknowledged("PromptUpdated")
	if p := thinkOf(resumed(t, c.record))["prompt"]; p != "base\nESCAPED" {
		t.Fatalf("prompt %q", p)
	}
	c.followClient([]byte(`{"type":"UpdatePrompt","type":"KeepAlive","prompt":"TWICE"}`))
	if _, _, err := c.record.resumeSettings(); err == nil {
		t.Fatal("a message with its type twice left the record trusted")
	}
}
