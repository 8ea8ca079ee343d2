package main

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// jsonEscaped spells every byte of s as a \u escape, as a JSON encoder may.
func jsonEscaped(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		b.WriteString(`\u00` + hex.EncodeToString([]byte{c}))
	}
	return b.String()
}

// TestScrubReachesEveryPath: a secret Deepgram echoes never reaches the
// client: not in a text message (as bytes, JSON-escaped, or with Go's
// \u003c for <), not in a close reason (TestScrubPing: a ping's); and the
// Deepgram key is on the list as well as the policy's values.
func TestScrubReachesEveryPath(t *testing.T) {
	h := policyHarness(t, "strip", "")
	raw := func(c *websocket.Conn, frame []byte) {
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"`+hex.EncodeToString(frame)+`"}`))
	}
	c := h.dial("")
	expectType(t, c, "Welcome")
	secrets := []string{llmKey, voiceKey, testAPIKey, "a<b&c>d" + llmKey}
	for _, secret := range secrets {
		for _, spelled := range []string{secret, jsonEscaped(secret), strings.NewReplacer("<", `\u003c`, "&", `\u0026`, ">", `\u003e`).Replace(secret),
			secret[:4] + "\u200b" + secret[4:], secret[:4] + `\u200b` + secret[4:], secret[:4] + "\u00ad" + secret[4:],
			// A byte that is not UTF-8 (the decoder makes it U+FFFD),
			// a variation selector, a grapheme joiner, a Hangul filler,
			// a C1 control, a lone surrogate escape.
			secret[:4] + "\xff" + secret[4:], secret[:4] + "\ufe0f" + secret[4:], secret[:4] + "\u034f" + secret[4:],
			secret[:4] + "\u3164" + secret[4:], secret[:4] + "\u0085" + secret[4:], secret[:4] + `\ud800` + secret[4:]} {
			raw(c, wspipe.AppendFrame(nil, wspipe.OpText, []byte(`{"type":"ConversationText","content":"`+spelled+`"}`), false))
			_, data := read(t, c)
			if got := string(h.relay.scrub.readable(data)); strings.Contains(got, llmKey) || strings.Contains(got, voiceKey) || strings.Contains(got, testAPIKey) || !strings.Contains(got, redactedMark) {
				t.Errorf("%q reached the client as %s", spelled, data)
			}
		}
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":4000,"reason":"bye `+testAPIKey+`"}`))
	ce := expectClose(t, c, 4000)
	if strings.Contains(ce.Reason, testAPIKey) || ce.Reason != "bye "+redactedMark {
		t.Fatalf("close reason %q", ce.Reason)
	}
}

// TestScrubPing: a ping from Deepgram reaches the client with its payload
// scrubbed, as a ping.
func TestScrubPing(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.rawDial("")
	frame := wspipe.AppendFrame(nil, wspipe.OpPing, []byte("p:"+testAPIKey), false)
	c.send(clientFrame(0x81, []byte(`{"type":"Fake.Raw","hex":"`+hex.EncodeToString(frame)+`"}`)))
	op, p := c.read()
	if op != wspipe.OpPing || string(p) != "p:"+redactedMark {
		t.Fatalf("got opcode %x %q", op, p)
	}
}

// TestRedactControlCharacters: a message quoting the key with control
// characters inside (a dg-error, a log line) loses the control characters
// first, so the key they hid is found and replaced.
func TestRedactControlCharacters(t *testing.T) {
	rl := &relay{scrub: newScrubber(testAPIKey, nil)}
	for _, msg := range []string{
		"bad key " + testAPIKey[:4] + "\t" + testAPIKey[4:],
		"bad key " + testAPIKey[:2] + "\x00\x7f" + testAPIKey[2:] + "\n",
		"bad key " + jsonEscaped(testAPIKey),
		"bad key " + testAPIKey[:3] + "\u200b" + testAPIKey[3:9] + "\u00ad" + testAPIKey[9:], // zero-width space, soft hyphen
		"bad key " + testAPIKey[:5] + "\xff" + testAPIKey[5:],                                // a byte that is not UTF-8
	} {
		if got := rl.redact(msg); strings.Contains(got, testAPIKey) || !strings.Contains(got, redactedMark) {
			t.Errorf("%q redacted to %q", msg, got)
		}
	}
	if got := rl.redact(strings.Repeat("é", 300)); len(got) > 200 || !strings.HasPrefix(strings.Repeat("é", 300), got) {
		t.Errorf("a long message was cut to %d bytes: %q", len(got), got)
	}
}

// FuzzScrub: whatever Deepgram sends, no secret is left in what the client
// reads (escapes decoded, control characters dropped), a message without
// one passes as it came, and a short payload stays within its limit.
func FuzzScrub(f *testing.F) {
	const secret = "sk-LLM<&>"
	sc := newScrubber(testAPIKey, [][]byte{[]byte(secret)})
	f.Add([]byte(`{"type":"ConversationText","content":"` + secret + `"}`))
	f.Add([]byte(`{"content":"\u0073k-LLM\u003c\u0026\u003e"}`))
	f.Add([]byte(`{"content":"sk-LL` + "\t" + `M<&>"}`))
	f.Add([]byte(`"\ud83d\ude00` + testAPIKey[:5] + `\u0000` + testAPIKey[5:] + `"`))
	f.Add([]byte(`\u`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		had := sc.holdsSecret(sc.readable(msg)) || sc.holdsSecret(msg)
		out := sc.text(bytes.Clone(msg))
		if sc.holdsSecret(out) || sc.holdsSecret(sc.readable(out)) {
			t.Fatalf("%q scrubbed to %q", msg, out)
		}
		if !had && !bytes.Equal(out, msg) {
			t.Fatalf("%q holds no secret but became %q", msg, out)
		}
		if short := sc.short(bytes.Clone(msg), 123); len(short) > 123 || sc.holdsSecret(sc.readable(short)) {
			t.Fatalf("%q as a close reason: %q", msg, short)
		}
	})
}

// TestScrubNestedJSON: a secret escaped inside a JSON string that sits in a
// Deepgram message (a function call's arguments are JSON in a string) is
// found and replaced; the attacker's read of issue 21 saw it pass.
func TestScrubNestedJSON(t *testing.T) {
	sc := newScrubber(testAPIKey, [][]byte{[]byte(llmKey)})
	for _, msg := range []string{
		`{"type":"FunctionCallRequest","functions":[{"arguments":"{\"k\":\"` + `\\` + jsonEscaped(llmKey) + `\"}"}]}`,
		`{"type":"FunctionCallRequest","functions":[{"arguments":"{\"k\":\"` + strings.ReplaceAll(jsonEscaped(llmKey), `\`, `\\`) + `\"}"}]}`,
		`{"type":"ConversationText","content":"` + strings.ReplaceAll(strings.ReplaceAll(jsonEscaped(llmKey), `\`, `\\`), `\`, `\\`) + `"}`,
	} {
		out := string(sc.text([]byte(msg)))
		if strings.Contains(string(sc.deepReadable([]byte(out))), llmKey) || !strings.Contains(out, redactedMark) {
			t.Errorf("%s came out as %s", msg, out)
		}
	}
}
