package scrub

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// The secrets of these tests: a Deepgram key and a policy's value.
const (
	testAPIKey = "dg-secret-KEY-0123456789abcdef"
	llmKey     = "sk-LLM-SECRET-0123456789"
)

// jsonEscaped spells every byte of s as a \u escape, as a JSON encoder may.
func jsonEscaped(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		b.WriteString(`\u00` + hex.EncodeToString([]byte{c}))
	}
	return b.String()
}

// TestRedactControlCharacters: a message quoting the key with control
// characters inside (a dg-error, a log line) loses the control characters
// first, so the key they hid is found and replaced.
func TestRedactControlCharacters(t *testing.T) {
	sc := New(testAPIKey, nil)
	for _, msg := range []string{
		"bad key " + testAPIKey[:4] + "\t" + testAPIKey[4:],
		"bad key " + testAPIKey[:2] + "\x00\x7f" + testAPIKey[2:] + "\n",
		"bad key " + jsonEscaped(testAPIKey),
		"bad key " + testAPIKey[:3] + "\u200b" + testAPIKey[3:9] + "\u00ad" + testAPIKey[9:], // zero-width space, soft hyphen
		"bad key " + testAPIKey[:5] + "\xff" + testAPIKey[5:],                                // a byte that is not UTF-8
	} {
		if got := sc.Clean(msg); strings.Contains(got, testAPIKey) || !strings.Contains(got, RedactedMark) {
			t.Errorf("%q redacted to %q", msg, got)
		}
	}
	if got := sc.Clean(strings.Repeat("é", 300)); len(got) > 200 || !strings.HasPrefix(strings.Repeat("é", 300), got) {
		t.Errorf("a long message was cut to %d bytes: %q", len(got), got)
	}
}

// FuzzScrub: whatever Deepgram sends, no secret is left in what the client
// reads (escapes decoded, control characters dropped), a message without
// one passes as it came, and a short payload stays within its limit.
func FuzzScrub(f *testing.F) {
	const secret = "sk-LLM<&>"
	sc := New(testAPIKey, [][]byte{[]byte(secret)})
	f.Add([]byte(`{"type":"ConversationText","content":"` + secret + `"}`))
	f.Add([]byte(`{"content":"\u0073k-LLM\u003c\u0026\u003e"}`))
	f.Add([]byte(`{"content":"sk-LL` + "\t" + `M<&>"}`))
	f.Add([]byte(`"\ud83d\ude00` + testAPIKey[:5] + `\u0000` + testAPIKey[5:] + `"`))
	f.Add([]byte(`\u`))
	f.Add([]byte{})
	// At the limits: a secret as deep in escapes as is undone
	// (maxEscapeLayers), a close reason a byte over its 123, a lone
	// surrogate at the end.
	deep := secret
	for range maxEscapeLayers {
		deep = strings.ReplaceAll(jsonEscaped(deep), `\`, `\\`)
	}
	f.Add([]byte(`{"content":"` + deep + `"}`))
	f.Add([]byte(strings.Repeat("é", 61) + secret))
	f.Add([]byte(`"` + testAPIKey + `\ud800`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		had := sc.holdsSecret(sc.Readable(msg)) || sc.holdsSecret(msg)
		out := sc.Text(bytes.Clone(msg))
		if sc.holdsSecret(out) || sc.holdsSecret(sc.Readable(out)) {
			t.Fatalf("%q scrubbed to %q", msg, out)
		}
		if !had && !bytes.Equal(out, msg) {
			t.Fatalf("%q holds no secret but became %q", msg, out)
		}
		if short := sc.Short(bytes.Clone(msg), 123); len(short) > 123 || sc.holdsSecret(sc.Readable(short)) {
			t.Fatalf("%q as a close reason: %q", msg, short)
		}
	})
}

// TestScrubNestedJSON: a secret escaped inside a JSON string that sits in a
// Deepgram message (a function call's arguments are JSON in a string) is
// found and replaced; the attacker's read of issue 21 saw it pass.
func TestScrubNestedJSON(t *testing.T) {
	sc := New(testAPIKey, [][]byte{[]byte(llmKey)})
	for _, msg := range []string{
		`{"type":"FunctionCallRequest","functions":[{"arguments":"{\"k\":\"` + `\\` + jsonEscaped(llmKey) + `\"}"}]}`,
		`{"type":"FunctionCallRequest","functions":[{"arguments":"{\"k\":\"` + strings.ReplaceAll(jsonEscaped(llmKey), `\`, `\\`) + `\"}"}]}`,
		`{"type":"ConversationText","content":"` + strings.ReplaceAll(strings.ReplaceAll(jsonEscaped(llmKey), `\`, `\\`), `\`, `\\`) + `"}`,
	} {
		out := string(sc.Text([]byte(msg)))
		if strings.Contains(string(sc.deepReadable([]byte(out))), llmKey) || !strings.Contains(out, RedactedMark) {
			t.Errorf("%s came out as %s", msg, out)
		}
	}
}

// TestScrubLongestFirst: a secret that holds another is replaced whole,
// and a message without a secret is returned as it came.
func TestScrubLongestFirst(t *testing.T) {
	sc := New("key-1", [][]byte{[]byte("key-1-and-more"), []byte("key-1"), nil})
	if got := string(sc.Text([]byte("a key-1-and-more b key-1"))); got != "a "+RedactedMark+" b "+RedactedMark {
		t.Errorf("%q", got)
	}
	msg := []byte(`{"type":"Welcome"}`)
	if got := sc.Text(msg); &got[0] != &msg[0] {
		t.Errorf("a message without a secret was copied")
	}
}
