package main

import (
	"encoding/json"
	"unicode/utf8"
)

// Bounds of a session's transcript, kept for its webhook record while it
// runs. At the default 1,000 sessions, every one of them two hours into a
// conversation would hold 128 MiB; an hour of talk is some 50 KiB.
const (
	// transcriptBytes bounds a transcript as encoded in the record:
	// past it the oldest entries are dropped, and counted.
	transcriptBytes = 128 << 10
	// transcriptTextBytes bounds one statement's content, and
	// transcriptCallBytes a function call's arguments and its response
	// each; transcriptCalls the calls of one entry; transcriptNameBytes a
	// call's id and name. Past them a value is cut, marked with "…".
	transcriptTextBytes = 16 << 10
	transcriptCallBytes = 4 << 10
	transcriptCalls     = 16
	transcriptNameBytes = 256
)

// transcriptEntry is one entry of a transcript, in the shapes of Deepgram's
// History message (AsyncAPI spec, AgentV1History: a statement {role,
// content}, or {function_calls: [{id, name, client_side, arguments,
// response}]}), so that a receiver can hand a transcript back to Deepgram as
// agent.context.messages.
type transcriptEntry struct {
	Role          string                 `json:"role,omitempty"`
	Content       *string                `json:"content,omitempty"`
	FunctionCalls []transcriptCallRecord `json:"function_calls,omitempty"`
}

// transcriptCallRecord is one function call of a History entry.
type transcriptCallRecord struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	ClientSide bool   `json:"client_side"`
	Arguments  string `json:"arguments"`
	Response   string `json:"response"`
}

// transcript is a session's conversation, from Deepgram's History messages,
// or its ConversationText ones when History is off (Settings
// flags.history: false). Only the pipe from Deepgram writes it.
//
// It is kept apart from the conversationRecord a move carries (record.go),
// which would otherwise hold the same turns: that one exists only with
// UPSTREAM_RESUME on, is bounded by what a new connection's Settings should
// carry (RESUME_HISTORY_BYTES), and begins with the client's own
// agent.context, turns not spoken in this session. With both on, a session
// holds its turns twice, within both bounds.
type transcript struct {
	entries []transcriptEntry
	sizes   []int // each entry's encoded size
	size    int   // their sum
	dropped int   // entries dropped, oldest first, to stay within transcriptBytes
	// fromHistory: a History has come, and only History counts from now
	// on (it repeats every ConversationText statement, and adds the calls).
	fromHistory bool
}

// add appends e, then drops the oldest entries until the transcript fits
// transcriptBytes. It returns how many it dropped.
func (t *transcript) add(e transcriptEntry) int {
	b, err := json.Marshal(e)
	if err != nil {
		return 0
	}
	n := len(b) + 1 // and its comma
	t.entries = append(t.entries, e)
	t.sizes = append(t.sizes, n)
	t.size += n
	dropped := 0
	for t.size > transcriptBytes && len(t.entries) > 0 {
		t.size -= t.sizes[0]
		t.entries[0] = transcriptEntry{} // let the strings go
		t.entries, t.sizes = t.entries[1:], t.sizes[1:]
		dropped++
	}
	t.dropped += dropped
	return dropped
}

// heardHistory takes a History message: the first one replaces what
// ConversationText gave, since History repeats it.
func (t *transcript) heardHistory(msg []byte) int {
	var h struct {
		Role          string                 `json:"role"`
		Content       *string                `json:"content"`
		FunctionCalls []transcriptCallRecord `json:"function_calls"`
	}
	if json.Unmarshal(msg, &h) != nil || (h.Content == nil && len(h.FunctionCalls) == 0) {
		return 0
	}
	if !t.fromHistory {
		t.fromHistory = true
		t.entries, t.sizes, t.size = nil, nil, 0
	}
	if h.Content != nil {
		return t.add(statement(h.Role, *h.Content))
	}
	calls := h.FunctionCalls[:min(len(h.FunctionCalls), transcriptCalls)]
	for i := range calls {
		c := &calls[i]
		c.ID, c.Name = cutText(c.ID, transcriptNameBytes), cutText(c.Name, transcriptNameBytes)
		c.Arguments, c.Response = cutText(c.Arguments, transcriptCallBytes), cutText(c.Response, transcriptCallBytes)
	}
	return t.add(transcriptEntry{FunctionCalls: calls})
}

// heardText takes a ConversationText message, kept until a History comes.
func (t *transcript) heardText(role, content string) int {
	if t.fromHistory {
		return 0
	}
	return t.add(statement(role, content))
}

// statement is a {role, content} entry, its content bounded; a role that is
// not one of Deepgram's two is kept as "other", not quoted.
func statement(role, content string) transcriptEntry {
	if role != "user" && role != "assistant" {
		role = "other"
	}
	c := cutText(content, transcriptTextBytes)
	return transcriptEntry{Role: role, Content: &c}
}

// cutText is s within limit bytes, cut at a rune boundary and marked.
func cutText(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const mark = "…"
	cut := limit - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
