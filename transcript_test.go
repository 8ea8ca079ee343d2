package main

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"dgrelay/internal/message"
	"dgrelay/internal/scrub"
)

// FuzzConversationMessages feeds Deepgram's messages as the records read
// them (History, ConversationText) and a client's as the conversation log
// reads it: the transcript stays within its bound and its sizes add up,
// cut text stays valid UTF-8, and no headers or credentials value survives
// the log's redaction. Seeded at the bounds.
func FuzzConversationMessages(f *testing.F) {
	at := func(n int) string { return strings.Repeat("a", n) }
	for _, seed := range []string{
		`{"type":"History","role":"user","content":"hi"}`,
		`{"type":"History","role":"assistant","content":"` + at(transcriptTextBytes) + `"}`,
		`{"type":"History","role":"assistant","content":"` + at(transcriptTextBytes-2) + `é€"}`,
		`{"type":"History","role":"x","content":"` + strings.Repeat(`\u0001`, transcriptTextBytes) + `"}`,
		`{"type":"History","function_calls":[` + strings.Repeat(`{"id":"1","name":"f","arguments":"`+at(transcriptCallBytes+1)+`","response":"r","client_side":true},`, transcriptCalls) + `{"id":"2"}]}`,
		`{"type":"ConversationText","role":"user","content":"` + at(transcriptBytes) + `"}`,
		`{"type":"Settings","agent":{"think":{"endpoint":{"url":"u","headers":{"authorization":"Bearer s"}},"functions":[{"endpoint":{"HEADERS":"s"}}]},"speak":[{"provider":{"credentials":{"k":"s"}}}]}}`,
		`{"type":"Settings","agent":{"think":{"endpoint":{"he\u0061ders":{"a":"s"}}}}}`,
		`{"type":"History","content":null}`,
		`[]`,
	} {
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, msg []byte, repeat uint8) {
		var tr transcript
		for i := 0; i < int(repeat%8)+1; i++ {
			tr.heardHistory(msg)
			var c struct{ Role, Content string }
			if json.Unmarshal(msg, &c) == nil {
				tr.heardText(c.Role, c.Content)
			}
		}
		sum := 0
		for _, n := range tr.sizes {
			sum += n
		}
		if sum != tr.size || tr.size > transcriptBytes || len(tr.sizes) != len(tr.entries) {
			t.Fatalf("sizes %d (sum %d) of %d entries", tr.size, sum, len(tr.entries))
		}
		if len(tr.entries) > 0 {
			b, _ := json.Marshal(tr.entries)
			if len(b) != tr.size+1 {
				t.Fatalf("encoded %d, counted %d", len(b), tr.size)
			}
		}
		for _, e := range tr.entries {
			if e.Content != nil && utf8.ValidString(string(msg)) && !utf8.ValidString(*e.Content) {
				t.Fatalf("cut content is not UTF-8: %q", *e.Content)
			}
		}
		out, unread := withoutCredentials(msg)
		if unread != "" {
			return
		}
		m, _, err := message.Parse(out)
		if err != nil {
			if mayHoldCredentials(msg) {
				t.Fatalf("redacted message does not parse: %v", err)
			}
			return // passed on unread: it names no such key
		}
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if credentialKeys[strings.ToLower(k)] && x != scrub.RedactedMark {
						t.Fatalf("%s kept %v", k, x)
					}
					walk(x)
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			}
		}
		walk(m)
	})
}

// TestCutText: a value past its bound is cut at a rune boundary, marked,
// and within the bound.
func TestCutText(t *testing.T) {
	for _, c := range []struct {
		in    string
		limit int
		want  string
	}{
		{"abc", 3, "abc"},
		{"abcdef", 5, "ab…"},
		{"aé€b", 6, "aé…"},
		{"aé€b", 5, "a…"},
		{"ééé", 5, "é…"},
	} {
		if got := cutText(c.in, c.limit); got != c.want || len(got) > c.limit {
			t.Errorf("cutText(%q, %d) = %q, want %q", c.in, c.limit, got, c.want)
		}
	}
}

// TestValidRequestID: a request id goes into log lines only as letters,
// digits and - _ . : within its bound.
func TestValidRequestID(t *testing.T) {
	for id, want := range map[string]bool{
		"fc553ec9-5874-49ca-a47c-b670d525a4b1":   true,
		"":                                       false,
		strings.Repeat("a", maxRequestIDBytes):   true,
		strings.Repeat("a", maxRequestIDBytes+1): false,
		"a b":                                    false,
		"a\nsession end":                         false,
		"é":                                      false,
	} {
		if validRequestID(id) != want {
			t.Errorf("validRequestID(%q) = %v", id, !want)
		}
	}
}
