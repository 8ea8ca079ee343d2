package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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

// recordingConn is a destination that keeps what a pipe writes to it.
type recordingConn struct {
	net.Conn // nil: only what a pipe calls is implemented
	out      bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }

// relayChunks runs Deepgram's bytes, cut into chunks, through a session's
// upstream-to-client pipe and returns what the client was sent and how the
// session ended. With gather, text is read whole through a filter; the text
// budget must be whole again once the pipe is done.
func relayChunks(chunks [][]byte, gather bool) ([]byte, outcome) {
	client, upstream := &recordingConn{}, &recordingConn{}
	s := &session{
		relay:    &relay{texts: &textBudget{limit: 500, perUser: 500}},
		userText: new(atomic.Int64),
		client:   &peer{conn: client, side: sideClient},
		upstream: &peer{conn: upstream, side: sideUpstream},
	}
	p := &pipe{s: s, src: s.upstream, dst: s.client, flow: &s.down, maxMsg: 1000}
	if gather {
		p.text = func(msg []byte) policyVerdict { return policyVerdict{out: msg} }
	}
	for _, c := range chunks {
		if p.consume(c) {
			break
		}
	}
	p.dropGathered() // as run does when it returns
	if held := s.relay.texts.used.Load(); held != 0 || s.userText.Load() != 0 {
		panic(fmt.Sprintf("%d bytes left in the text budget, %d in the user's share", held, s.userText.Load()))
	}
	var in int
	for _, c := range chunks {
		in += len(c)
	}
	// The counters count what came, never what a header claims.
	if n := s.down.bytes.Load(); n < 0 || n > int64(in) {
		panic(fmt.Sprintf("%d bytes counted of %d read", n, in))
	}
	return client.out.Bytes(), s.result()
}

// FuzzPipeSplits: however Deepgram's bytes are cut into reads, the client is
// sent the same bytes and the session ends the same way, and no input makes
// the frame parser panic.
func FuzzPipeSplits(f *testing.F) {
	frame := func(first byte, payload []byte) []byte { return appendFrame(nil, first&0x0f, payload, false) }
	var stream []byte
	stream = append(stream, frame(opText, []byte(`{"type":"Welcome"}`))...)
	stream = append(stream, frame(opBinary, bytes.Repeat([]byte{1}, 300))...)
	stream = append(stream, 0x01, 2, 'a', 'b', 0x89, 1, 'p', 0x80, 1, 'c') // fragments around a ping
	stream = append(stream, frame(opClose, closePayload(4000, "bye"))...)
	f.Add(stream, uint16(7), uint16(3))
	f.Add(frame(opBinary, make([]byte, 1001)), uint16(1), uint16(2))                                           // too big
	f.Add([]byte{0x82, 0x7f, 0xff, 0, 0, 0, 0, 0, 0, 0}, uint16(2), uint16(1))                                 // bad length
	f.Add([]byte{0x82, 0x81, 1, 2, 3, 4, 5, 0x88, 0}, uint16(3), uint16(5))                                    // masked
	f.Add(append(frame(opBinary, []byte("x")), 0x88, 1, 3), uint16(4), uint16(1))                              // one-byte close
	f.Add(append(frame(opText, make([]byte, 300)), frame(opText, make([]byte, 300))...), uint16(5), uint16(9)) // past the text budget when gathered
	// Lengths at the limits, in a continuation after a first fragment, so
	// that the message's length is a sum: 0, the limit, one past it, 2^63-1.
	for _, n := range []uint64{0, 1000, 1001, 1<<63 - 1} {
		for _, op := range []byte{opBinary, opText} {
			for _, seed := range []uint16{1, 2} { // odd: text gathered
				huge := binary.BigEndian.AppendUint64([]byte{0x80, 127}, n)
				f.Add(append(append([]byte{op, 100}, make([]byte, 100)...), huge...), seed, uint16(3))
			}
		}
	}
	f.Add([]byte{0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint16(8), uint16(1)) // 2^63-1 in one frame
	f.Fuzz(func(t *testing.T, data []byte, first, step uint16) {
		// An odd first also reads text whole through a filter (as the
		// secret scrub does), against a text budget of 500 bytes.
		gather := first%2 == 1
		whole, wholeEnd := relayChunks([][]byte{data}, gather)
		var chunks [][]byte
		size := int(first%64) + 1
		for rest := data; len(rest) > 0; size = int(step%16) + 1 {
			n := min(size, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		split, splitEnd := relayChunks(chunks, gather)
		if !bytes.Equal(whole, split) {
			t.Fatalf("cut into %d reads the client got %x, whole %x", len(chunks), split, whole)
		}
		if wholeEnd.cause != splitEnd.cause || wholeEnd.clientCode != splitEnd.clientCode || wholeEnd.clientReason != splitEnd.clientReason {
			t.Fatalf("cut into %d reads the session ended %+v, whole %+v", len(chunks), splitEnd, wholeEnd)
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
