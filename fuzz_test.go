package main

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzTokenFrom: whatever the handshake carries, token extraction neither
// panics nor takes a token from anywhere but the bearer pair or ?token=.
func FuzzTokenFrom(f *testing.F) {
	f.Add("bearer, eyJ.a.b", "", "service=agent")
	f.Add("", "", "token=eyJ.a.b&service=agent")
	f.Add("bearer", "", "token=x")
	f.Add("token, raw-key", "", "")
	f.Add("Bearer,,  x ,y", "", "token=%zz")
	f.Add(" , ", "", "token=a&token=b")
	f.Add("", "Bearer eyJ.h.s", "token=q")
	f.Add("", "Token dg-key", "token=q")
	f.Fuzz(func(t *testing.T, protocols, authorization, query string) {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.URL.RawQuery = query
		if protocols != "" {
			r.Header.Set("Sec-WebSocket-Protocol", protocols)
		}
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		tok, err := tokenFrom(r)
		offered := headerTokens(r.Header, "Sec-WebSocket-Protocol")
		if len(offered) > 0 {
			i := slices.IndexFunc(offered, func(p string) bool { return strings.EqualFold(p, "bearer") })
			switch {
			case i < 0 && err != errNoBearer:
				t.Fatalf("offered %q without bearer: %q, %v", offered, tok, err)
			case i >= 0 && i+1 < len(offered) && tok != offered[i+1]:
				t.Fatalf("offered %q: took %q", offered, tok)
			case i >= 0 && i+1 == len(offered) && tok != "":
				t.Fatalf("bearer alone gave %q", tok)
			}
			return
		}
		if err != nil {
			t.Fatalf("no subprotocols: %v", err)
		}
		if scheme, bearer, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "bearer") {
			if tok != strings.TrimSpace(bearer) {
				t.Fatalf("Authorization %q: took %q", authorization, tok)
			}
			return
		}
		if q, perr := url.ParseQuery(query); perr == nil && tok != q.Get("token") {
			t.Fatalf("query %q: took %q", query, tok)
		}
	})
}

// FuzzRoute: any query either is refused with 400 or routes to one of the
// two upstreams with a forwarded query that holds neither service nor token
// and keeps the client's other parameters, in order, byte for byte.
func FuzzRoute(f *testing.F) {
	f.Add("service=agent&token=abc&model=nova-3")
	f.Add("service=transcription&encoding=linear16&sample_rate=16000")
	f.Add("TOKEN=x&Service=agent&service=agent")
	f.Add("a=%20&&b&=c&service")
	f.Add("service=%61gent&tok%65n=1")
	agent, _ := newUpstream("wss://agent.example/v1/agent/converse")
	listen, _ := newUpstream("wss://listen.example/v1/listen")
	rl := &relay{agent: agent, listen: listen}
	f.Fuzz(func(t *testing.T, query string) {
		service, up, forwarded, err := rl.route(query)
		if err != nil {
			return
		}
		if (service == "agent") != (up.base == agent.base) || (service != "agent" && service != "transcription") {
			t.Fatalf("%q routed %q to %v", query, service, up.base)
		}
		var kept []string
		for part := range strings.SplitSeq(query, "&") {
			k, _, _ := strings.Cut(part, "=")
			key, _ := url.QueryUnescape(k)
			if part != "" && key != "service" && !strings.EqualFold(key, "token") {
				kept = append(kept, part)
			}
		}
		if forwarded != strings.Join(kept, "&") {
			t.Fatalf("%q forwarded %q, want %q", query, forwarded, strings.Join(kept, "&"))
		}
	})
}

// FuzzClientMessage: a message parseClientMessage accepts is one JSON object
// that encoding/json reads the same, whose encoded form reads back the same,
// so what the policy judged is what Deepgram is sent; nothing panics.
func FuzzClientMessage(f *testing.F) {
	for _, tc := range policyBypasses {
		f.Add([]byte(tc.msg))
	}
	nest := func(n int) []byte {
		return []byte(`{"type":"Settings","x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}
	f.Add(nest(maxMessageDepth - 2)) // the deepest accepted
	f.Add(nest(maxMessageDepth - 1)) // one past it
	f.Add([]byte(`{"type":"Settings","n":9223372036854775807,"m":-9223372036854775808,"f":1e400}`))
	f.Add([]byte(`{"type":"KeepAlive"}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"type":"Settings","a":"\ud800","b":"` + "\xff" + `"}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, typ, err := parseClientMessage(msg)
		if err != nil {
			return
		}
		var std map[string]any
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.UseNumber()
		if err := dec.Decode(&std); err != nil || !reflect.DeepEqual(m, std) || std["type"] != typ {
			t.Fatalf("%q: parsed %v, encoding/json read %v (%v)", msg, m, std, err)
		}
		out, err := encodeMessage(m)
		if err != nil {
			t.Fatalf("%q: encode: %v", msg, err)
		}
		again, _, err := parseClientMessage(out)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("%q encoded as %q reads back as %v (%v)", msg, out, again, err)
		}
	})
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
		had := sc.holdsSecret(readable(msg)) || sc.holdsSecret(msg)
		out := sc.text(bytes.Clone(msg))
		if sc.holdsSecret(out) || sc.holdsSecret(readable(out)) {
			t.Fatalf("%q scrubbed to %q", msg, out)
		}
		if !had && !bytes.Equal(out, msg) {
			t.Fatalf("%q holds no secret but became %q", msg, out)
		}
		if short := sc.short(bytes.Clone(msg), 123); len(short) > 123 || sc.holdsSecret(readable(short)) {
			t.Fatalf("%q as a close reason: %q", msg, short)
		}
	})
}
