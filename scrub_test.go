package main

import (
	"encoding/hex"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/scrub"
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
			if got := string(h.relay.scrub.Readable(data)); strings.Contains(got, llmKey) || strings.Contains(got, voiceKey) || strings.Contains(got, testAPIKey) || !strings.Contains(got, scrub.RedactedMark) {
				t.Errorf("%q reached the client as %s", spelled, data)
			}
		}
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":4000,"reason":"bye `+testAPIKey+`"}`))
	ce := expectClose(t, c, 4000)
	if strings.Contains(ce.Reason, testAPIKey) || ce.Reason != "bye "+scrub.RedactedMark {
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
	if op != wspipe.OpPing || string(p) != "p:"+scrub.RedactedMark {
		t.Fatalf("got opcode %x %q", op, p)
	}
}
