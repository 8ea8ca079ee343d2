package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

type message struct {
	typ  websocket.MessageType
	data []byte
}

// mixedMessages is a reproducible stream of text and binary messages from
// 0 B to exactly 1 MiB, mostly audio-sized, as a session carries them.
func mixedMessages(seed uint64, n int) []message {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	sizes := []int{0, 1, wspipe.ReadBufferSize - 1, wspipe.ReadBufferSize, wspipe.ReadBufferSize + 1, 1 << 20}
	out := make([]message, n)
	for i := range out {
		var size int
		switch p := rng.IntN(100); {
		case i < len(sizes):
			size = sizes[i]
		case p < 90:
			size = rng.IntN(4096)
		case p < 99:
			size = rng.IntN(128 << 10)
		default:
			size = rng.IntN(1<<20 + 1)
		}
		data := make([]byte, size)
		typ := websocket.MessageBinary
		if rng.IntN(3) == 0 {
			// Text the fake echoes as is: no JSON type it acts on.
			typ = websocket.MessageText
			for j := range data {
				data[j] = byte('a' + rng.IntN(26))
			}
		} else {
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
		}
		out[i] = message{typ, data}
	}
	rng.Shuffle(n-len(sizes), func(i, j int) {
		i, j = i+len(sizes), j+len(sizes)
		out[i], out[j] = out[j], out[i]
	})
	return out
}

// TestRelayKeepsEveryMessage sends thousands of mixed messages through
// several concurrent sessions and checks each echo's type, bytes and order.
func TestRelayKeepsEveryMessage(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	const sessions, perSession = 4, 600
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := 0; s < sessions; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- relayAndCheck(h, uint64(s+1), perSession)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func relayAndCheck(h *harness, seed uint64, n int) error {
	c, err := h.tryDial("service=agent", nil)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	msgs := mixedMessages(seed, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Writing and reading at once: large messages would otherwise fill
	// every buffer on the way and stall both sides.
	werr := make(chan error, 1)
	go func() {
		for _, m := range msgs {
			if err := c.Write(ctx, m.typ, m.data); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	typ, data, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText || !bytes.Contains(data, []byte(`"Welcome"`)) {
		return fmt.Errorf("session %d: want Welcome first, got %v %.60q %v", seed, typ, data, err)
	}
	for i, m := range msgs {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("session %d: message %d: %v", seed, i, err)
		}
		if typ != m.typ || !bytes.Equal(data, m.data) {
			return fmt.Errorf("session %d: message %d: got %v of %d B, want %v of %d B", seed, i, typ, len(data), m.typ, len(m.data))
		}
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("session %d: write: %v", seed, err)
	}
	return c.Close(websocket.StatusNormalClosure, "")
}

// TestSettingsAtOpenArrives sends Settings the instant the socket opens, as
// the React component does, and expects Deepgram to have it.
func TestSettingsAtOpenArrives(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.dial("service=agent&token=abc")
	settings := []byte(`{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}}}`)
	write(t, c, websocket.MessageText, settings)
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	texts := h.fake.Texts()
	if len(texts) != 1 || !bytes.Equal(texts[0], settings) {
		t.Fatalf("upstream received %q, want exactly the Settings", texts)
	}
}

// TestUpstreamHandshake checks what Deepgram sees: the key as a Token
// header, the route by service, and exactly the forwarded query.
func TestUpstreamHandshake(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{APIKey: testAPIKey})
	cases := []struct {
		query, path, forwarded string
	}{
		{"", "/v1/agent/converse", ""},
		{"service=agent&token=eyJ.abc.def", "/v1/agent/converse", ""},
		{"token=t&service=transcription&model=nova-3&encoding=linear16&sample_rate=16000&interim_results=true&keywords=a%20b&keywords=c",
			"/v1/listen", "model=nova-3&encoding=linear16&sample_rate=16000&interim_results=true&keywords=a%20b&keywords=c"},
		{"Token=x&tag=x+y&service=agent", "/v1/agent/converse", "tag=x+y"},
	}
	for _, tc := range cases {
		c := h.dial(tc.query)
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
		h.upstreamClosed()
		hs := h.fake.Handshakes()
		got := hs[len(hs)-1]
		if got.Header.Get("Authorization") != "Token "+testAPIKey {
			t.Errorf("%q: Authorization header is not the key", tc.query)
		}
		if got.Path != tc.path || got.RawQuery != tc.forwarded {
			t.Errorf("%q: upstream got %s?%s, want %s?%s", tc.query, got.Path, got.RawQuery, tc.path, tc.forwarded)
		}
		if strings.Contains(strings.ToLower(got.RawQuery), "token") || strings.Contains(got.RawQuery, "service") {
			t.Errorf("%q: token or service forwarded: %s", tc.query, got.RawQuery)
		}
	}
}

func TestUpstreamHostHasNoDefaultPort(t *testing.T) {
	for raw, want := range map[string]string{
		"wss://agent.deepgram.com:443/v1/agent/converse": "agent.deepgram.com",
		"wss://agent.deepgram.com/v1/agent/converse":     "agent.deepgram.com",
		"ws://127.0.0.1:80/x":                            "127.0.0.1",
		"ws://127.0.0.1:8081/x":                          "127.0.0.1:8081",
		"wss://api.eu.deepgram.com:8443/v1/listen":       "api.eu.deepgram.com:8443",
	} {
		up, err := newUpstream(raw)
		if err != nil || up.host != want {
			t.Errorf("%s: host %q (%v), want %q", raw, up.host, err, want)
		}
	}
	up, _ := newUpstream("wss://agent.deepgram.com/v1/agent/converse?mip_opt_out=true")
	if got := up.target("model=x"); got != "wss://agent.deepgram.com/v1/agent/converse?mip_opt_out=true&model=x" {
		t.Errorf("target keeps the upstream's own query first: %s", got)
	}
}

// TestHTTPAnswers covers every refusal made before the upgrade.
func TestHTTPAnswers(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	base := h.srv.URL
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
		"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	cases := []struct {
		name   string
		path   string
		header http.Header
		status int
	}{
		{"healthz", "/healthz", nil, 200},
		{"readyz", "/readyz", nil, 200},
		{"plain GET to the WebSocket path", "/ws/deepgram-proxy/", nil, 426},
		{"plain GET without the trailing slash", "/ws/deepgram-proxy", nil, 426},
		{"unknown service", "/ws/deepgram-proxy/?service=speak", upgrade, 400},
		{"malformed query", "/ws/deepgram-proxy/?service=%zz", upgrade, 400},
		{"conflicting services", "/ws/deepgram-proxy/?service=agent&service=transcription", upgrade, 400},
		{"old WebSocket version", "/ws/deepgram-proxy/", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"8"}}, 400},
		{"other path", "/ws/deepgram-proxy/extra", upgrade, 404},
	}
	for _, tc := range cases {
		if resp := get(t, base+tc.path, tc.header); resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
	big := http.Header{"X-Padding": {strings.Repeat("p", 24<<10)}}
	if resp := get(t, base+"/ws/deepgram-proxy/", big); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: status %d, want 431", resp.StatusCode)
	}
	if n := len(h.fake.Handshakes()); n != 0 {
		t.Errorf("%d upstream dials for requests refused before the upgrade", n)
	}
}

// TestClosePaths checks that the first side to close ends the other with
// the right code and reason.
func TestClosePaths(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})

	t.Run("client closes with a code", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		c.Close(4000, "user hung up")
		if got := h.upstreamClosed(); got.Code != 4000 || got.Reason != "user hung up" {
			t.Fatalf("upstream got %+v", got)
		}
	})
	t.Run("client closes without a code", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNoStatusRcvd, "")
		if got := h.upstreamClosed(); got.Code != websocket.StatusNoStatusRcvd {
			t.Fatalf("upstream got %+v, want a close frame without a code", got)
		}
	})
	t.Run("upstream closes with a code", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":4008,"reason":"NET-0001 no audio"}`))
		if ce := expectClose(t, c, 4008); ce.Reason != "NET-0001 no audio" {
			t.Fatalf("reason %q", ce.Reason)
		}
		h.upstreamClosed()
	})
	t.Run("upstream closes normally", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":1000,"reason":""}`))
		expectClose(t, c, websocket.StatusNormalClosure)
		h.upstreamClosed()
	})
	t.Run("upstream vanishes", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
		if ce := expectClose(t, c, websocket.StatusBadGateway); ce.Reason != "upstream went away" {
			t.Fatalf("reason %q", ce.Reason)
		}
		h.upstreamClosed()
	})
	t.Run("client vanishes", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		c.CloseNow()
		if got := h.upstreamClosed(); got.Code != websocket.StatusGoingAway {
			t.Fatalf("upstream got %+v, want 1001", got)
		}
	})
	// The relay logs a session once both closes are done, after the fake
	// has seen its own.
	waitForLog(t, h.logs, `"cause":"vanished"`)
}

// TestOversizeMessage: a message over MAX_MESSAGE_BYTES closes its sender
// with 1009 and the other side normally.
func TestOversizeMessage(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_MESSAGE_BYTES": "1000"}, fakedeepgram.Options{})

	t.Run("from the client", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageBinary, make([]byte, 1000)) // at the limit: relayed
		if typ, data := read(t, c); typ != websocket.MessageBinary || len(data) != 1000 {
			t.Fatalf("message at the limit: got %v %d B", typ, len(data))
		}
		write(t, c, websocket.MessageBinary, make([]byte, 1001))
		expectClose(t, c, websocket.StatusMessageTooBig)
		if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure {
			t.Fatalf("upstream got %+v, want 1000", got)
		}
	})
	t.Run("from the upstream", func(t *testing.T) {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Send","bytes":1001,"binary":true}`))
		ce := expectClose(t, c, websocket.StatusNormalClosure)
		if ce.Reason != "upstream message too big" {
			t.Fatalf("reason %q", ce.Reason)
		}
		if got := h.upstreamClosed(); got.Code != websocket.StatusMessageTooBig {
			t.Fatalf("upstream got %+v, want 1009", got)
		}
	})
}

// TestUpstreamFailures: Deepgram's refusal or absence reaches the browser as
// an in-band Error frame, then close 1014, and never holds the key.
func TestUpstreamFailures(t *testing.T) {
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}()
	cases := []struct {
		name string
		env  map[string]string
		opts fakedeepgram.Options
		code string
	}{
		{"wrong key", nil, fakedeepgram.Options{APIKey: "another-key"}, "UPSTREAM_AUTH"},
		{"refused", map[string]string{"DEEPGRAM_AGENT_URL": "ws://" + closedPort + "/v1/agent/converse"}, fakedeepgram.Options{}, "UPSTREAM_UNAVAILABLE"},
		{"timed out", nil, fakedeepgram.Options{HandshakeDelay: 5 * time.Second}, "UPSTREAM_UNAVAILABLE"},
		{"bad request", nil, fakedeepgram.Options{RejectStatus: 400}, "UPSTREAM_REJECTED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.env, tc.opts)
			h.relay.dialTimeout = 300 * time.Millisecond
			c := h.dial("service=agent&token=abc&keyterms=private-words")
			typ, data := read(t, c)
			if typ != websocket.MessageText || !bytes.Contains(data, []byte(`"type":"Error"`)) ||
				!bytes.Contains(data, []byte(`"code":"`+tc.code+`"`)) || !bytes.Contains(data, []byte(`"description":"`)) {
				t.Fatalf("want an Error frame with %s, got %s", tc.code, data)
			}
			if bytes.Contains(data, []byte(testAPIKey)) || bytes.Contains(data, []byte("another-key")) {
				t.Fatalf("the Error frame holds a key: %s", data)
			}
			ce := expectClose(t, c, websocket.StatusBadGateway)
			if strings.Contains(ce.Reason, testAPIKey) {
				t.Fatal("the close reason holds the key")
			}
			h.relay.drain(time.Second) // waits for the handler to log
			if !strings.Contains(h.logs.String(), `"code":"`+tc.code+`"`) {
				t.Errorf("the failure is not logged with its code:\n%s", h.logs.String())
			}
			if strings.Contains(h.logs.String(), "private-words") {
				t.Errorf("the dial error logged the query string:\n%s", h.logs.String())
			}
		})
	}
}

// TestUpstreamDialRetry: a dial that Deepgram's front cut or answered 502,
// 503 or 504 is tried again and the session opens; a refused key or request
// is not tried again; UPSTREAM_RETRIES bounds the tries.
func TestUpstreamDialRetry(t *testing.T) {
	cases := []struct {
		name       string
		retries    string
		opts       fakedeepgram.Options
		handshakes int
		code       string // the Error frame's, or "" when the session opens
		metric     string // the retry counter's line, when there is one
	}{
		{"503 then open", "1", fakedeepgram.Options{RejectStatus: 503, RejectFirst: 1}, 2, "", `cause="http_503",service="agent"} 1`},
		{"502 twice then open", "2", fakedeepgram.Options{RejectStatus: 502, RejectFirst: 2}, 3, "", `cause="http_502",service="agent"} 2`},
		{"cut then open", "1", fakedeepgram.Options{DropFirst: 1}, 2, "", `cause="connect",service="agent"} 1`},
		{"504 past the retries", "1", fakedeepgram.Options{RejectStatus: 504}, 2, "UPSTREAM_REJECTED", `cause="http_504",service="agent"} 1`},
		{"retries off", "0", fakedeepgram.Options{RejectStatus: 503, RejectFirst: 1}, 1, "UPSTREAM_REJECTED", ""},
		{"a refused key is not retried", "3", fakedeepgram.Options{APIKey: "another-key"}, 1, "UPSTREAM_AUTH", ""},
		{"a bad request is not retried", "3", fakedeepgram.Options{RejectStatus: 400}, 1, "UPSTREAM_REJECTED", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, map[string]string{"UPSTREAM_RETRIES": tc.retries}, tc.opts)
			c := h.dial("service=agent")
			if tc.code == "" {
				expectType(t, c, "Welcome")
				c.Close(websocket.StatusNormalClosure, "")
			} else {
				if e := expectType(t, c, "Error"); e["code"] != tc.code {
					t.Fatalf("Error frame %v, want %s", e, tc.code)
				}
				expectClose(t, c, websocket.StatusBadGateway)
			}
			h.relay.drain(time.Second)
			if got := len(h.fake.Handshakes()); got != tc.handshakes {
				t.Errorf("%d handshakes at Deepgram, want %d", got, tc.handshakes)
			}
			m := httptest.NewServer(h.relay.metricsServer().Handler)
			defer m.Close()
			body := scrape(t, m.URL+"/metrics")
			if tc.metric != "" && !strings.Contains(body, "dgrelay_upstream_dial_retries_total{"+tc.metric) {
				t.Errorf("no retry counted as %s:\n%s", tc.metric, grepLines(body, "dial_retries"))
			}
			if tc.metric == "" && strings.Contains(body, "dgrelay_upstream_dial_retries_total{") {
				t.Errorf("a retry was counted:\n%s", grepLines(body, "dial_retries"))
			}
			if logged := strings.Contains(h.logs.String(), `"message":"upstream dial retried"`); logged != (tc.metric != "") {
				t.Errorf("retry logged: %v, want %v", logged, tc.metric != "")
			}
			if want := fmt.Sprintf(`"dial_tries":%d`, tc.handshakes); !strings.Contains(h.logs.String(), want) {
				t.Errorf("no %s in the session's last line:\n%s", want, h.logs.String())
			}
		})
	}
}

// TestUpstreamRedirectNotFollowed: a 3xx from upstream is Deepgram's answer,
// not a place to go. Followed, the handshake would take the key (and the
// forwarded query, in a Referer) to whatever Location names; here that is a
// second upstream that would accept it.
func TestUpstreamRedirectNotFollowed(t *testing.T) {
	elsewhere := fakedeepgram.Start(fakedeepgram.Options{APIKey: testAPIKey})
	// Cleanups run last first: this one after the harness's, which ends a
	// session that did reach elsewhere.
	t.Cleanup(elsewhere.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(elsewhere.URL, "ws://", "http://", 1)+r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(redirector.Close)
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": "ws" + strings.TrimPrefix(redirector.URL, "http") + "/v1/agent/converse"},
		fakedeepgram.Options{})
	c := h.dial("service=agent&keyterms=private-words")
	if e := expectType(t, c, "Error"); e["code"] != "UPSTREAM_REJECTED" || !strings.Contains(e["description"].(string), "HTTP 302") {
		t.Fatalf("Error frame %v, want UPSTREAM_REJECTED naming HTTP 302", e)
	}
	expectClose(t, c, websocket.StatusBadGateway)
	h.relay.drain(time.Second)
	if hs := elsewhere.Handshakes(); len(hs) != 0 {
		t.Fatalf("the redirect was followed: the other server got %d handshake(s), with the key: %v",
			len(hs), hs[0].Header.Get("Authorization") == "Token "+testAPIKey)
	}
	if !strings.Contains(h.logs.String(), `"upstream_status":302`) {
		t.Errorf("the failure is not logged with Deepgram's status:\n%s", grepLines(h.logs.String(), "upstream dial failed"))
	}
}

// TestClientGoneDuringDial: a client that leaves while Deepgram is being
// dialled is its own ending, not a Deepgram failure: no WARNING and nothing
// in dgrelay_upstream_failures_total, or any client could raise an outage
// alert by opening and dropping connections.
func TestClientGoneDuringDial(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{HandshakeDelay: 30 * time.Second})
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET /ws/deepgram-proxy/?service=agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(h.fake.Handshakes()) == 1 }) // the dial is under way
	conn.Close()
	waitForLog(t, h.logs, `"service":"agent"`) // the handler's one line
	h.relay.drain(5 * time.Second)

	logs := h.logs.String()
	if strings.Contains(logs, `"severity":"WARNING"`) || strings.Contains(logs, "upstream dial failed") {
		t.Errorf("a client leaving was logged as a Deepgram failure:\n%s", logs)
	}
	if !strings.Contains(grepLines(logs, `"severity":"INFO"`), `"cause":"client_gone"`) {
		t.Errorf("no INFO line with cause client_gone:\n%s", logs)
	}
	m := httptest.NewServer(h.relay.metricsServer().Handler)
	defer m.Close()
	body := scrape(t, m.URL+"/metrics")
	if strings.Contains(body, "dgrelay_upstream_failures_total{") {
		t.Errorf("counted as a Deepgram failure:\n%s", grepLines(body, "upstream_failures"))
	}
	if !strings.Contains(body, `dgrelay_sessions_total{outcome="client_gone",service="agent"} 1`) {
		t.Errorf("not counted as client_gone:\n%s", grepLines(body, "sessions_total"))
	}
	if strings.Contains(body, `result="error"`) {
		t.Errorf("the dial is counted as an error:\n%s", grepLines(body, "dial_seconds_count"))
	}
}

// grepLines is the lines of s that hold sub.
func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestSessionLogTrace: with GOOGLE_CLOUD_PROJECT set, a session's log lines
// carry its request's trace, from traceparent or X-Cloud-Trace-Context, so
// that Cloud Logging shows them with the request; a malformed header puts
// nothing in the logs.
func TestSessionLogTrace(t *testing.T) {
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	want := `"logging.googleapis.com/trace":"projects/my-project/traces/` + id + `"`
	cases := []struct {
		name, project, header, value string
		traced                       bool
	}{
		{"traceparent", "my-project", "traceparent", "00-" + id + "-00f067aa0ba902b7-01", true},
		{"X-Cloud-Trace-Context", "my-project", "X-Cloud-Trace-Context", id + "/1234567890;o=1", true},
		{"X-Cloud-Trace-Context without a span", "my-project", "X-Cloud-Trace-Context", id, true},
		{"not hex", "my-project", "X-Cloud-Trace-Context", `4bf92f3577b34da6a3ce929d0e0e47"}` + "/1", false},
		{"too short", "my-project", "traceparent", "00-4bf92f35-00f067aa0ba902b7-01", false},
		{"all zeros", "my-project", "traceparent", "00-" + strings.Repeat("0", 32) + "-00f067aa0ba902b7-01", false},
		{"no project", "", "traceparent", "00-" + id + "-00f067aa0ba902b7-01", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			if tc.project != "" {
				env["GOOGLE_CLOUD_PROJECT"] = tc.project
			}
			h := newHarness(t, env, fakedeepgram.Options{})
			hdr := http.Header{}
			hdr.Set(tc.header, tc.value)
			c, err := h.tryDial("", &websocket.DialOptions{HTTPHeader: hdr})
			if err != nil {
				t.Fatal(err)
			}
			expectType(t, c, "Welcome")
			c.Close(websocket.StatusNormalClosure, "")
			h.relay.drain(time.Second)
			logs := h.logs.String()
			end := grepLines(logs, `"message":"session end"`)
			if end == "" {
				t.Fatalf("no session end line:\n%s", logs)
			}
			if strings.Contains(end, want) != tc.traced {
				t.Errorf("traced %v, want %v:\n%s", !tc.traced, tc.traced, end)
			}
			if !tc.traced && strings.Contains(logs, "logging.googleapis.com/trace") {
				t.Errorf("a trace reached the logs:\n%s", logs)
			}
		})
	}
}

// TestSessionEndLog checks the one line a session leaves: counts both ways,
// who closed, both codes and Deepgram's request id, and no token or query.
func TestSessionEndLog(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.dial("service=agent&token=user-jwt-SECRET&model=m")
	expectType(t, c, "Welcome")
	write(t, c, websocket.MessageBinary, make([]byte, 640))
	read(t, c)
	c.Close(websocket.StatusNormalClosure, "bye")
	h.upstreamClosed()
	h.relay.drain(time.Second) // waits for the handler to log
	logs := h.logs.String()
	for _, want := range []string{`"message":"session end"`, `"severity":"INFO"`, `"service":"agent"`,
		`"up_messages":1`, `"up_bytes":640`, `"down_messages":2`, `"closed_by":"client"`,
		`"client_close":1000`, `"upstream_close":1000`, `"dg_request_id":"`, `"dial_ms":`, `"dial_tries":1`, `"remote":"127.0.0.1"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("session end log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "user-jwt-SECRET") || strings.Contains(logs, "model=m") {
		t.Errorf("a token or the raw query is logged:\n%s", logs)
	}
}

// TestUpstreamTLS dials the upstream over wss://, as production does: the
// handshake-only transport verifies the certificate against its roots and
// sends SNI, and a certificate it cannot verify is UPSTREAM_UNAVAILABLE.
func TestUpstreamTLS(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: true, APIKey: testAPIKey})
	defer fake.Close()
	env := map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse"}

	t.Run("trusted", func(t *testing.T) {
		h := newHarness(t, env, fakedeepgram.Options{})
		trust(h, fake)
		c := h.dial("service=agent")
		write(t, c, websocket.MessageText, []byte(`{"type":"Settings"}`))
		expectType(t, c, "Welcome")
		expectType(t, c, "SettingsApplied")
		write(t, c, websocket.MessageBinary, []byte{9, 8, 7})
		if _, data := read(t, c); !bytes.Equal(data, []byte{9, 8, 7}) {
			t.Fatalf("echo %v", data)
		}
		c.Close(websocket.StatusNormalClosure, "")

		// The next session resumes the TLS session the first was given.
		c = h.dial("service=agent")
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
		hs := fake.Handshakes()
		var resumed []bool
		for _, h := range hs {
			resumed = append(resumed, h.Resumed)
		}
		if len(resumed) != 2 || resumed[0] || !resumed[1] {
			t.Fatalf("handshakes resumed %v, want [false true]", resumed)
		}
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		h := newHarness(t, env, fakedeepgram.Options{})
		c := h.dial("service=agent")
		if e := expectType(t, c, "Error"); e["code"] != "UPSTREAM_UNAVAILABLE" {
			t.Fatalf("Error frame %v", e)
		}
		expectClose(t, c, websocket.StatusBadGateway)
		if strings.Contains(h.logs.String(), "upstream dial retried") {
			t.Error("a certificate that does not verify was tried again")
		}
	})
}

// trust makes h's relay verify the fake's certificate.
func trust(h *harness, fake *fakedeepgram.Server) {
	pool := x509.NewCertPool()
	pool.AddCert(fake.Certificate())
	h.relay.dialOpts.HTTPClient.Transport.(*upgradeTransport).tlsConfig.RootCAs = pool
}

// TestUpstreamTLSFrames: a TLS upstream is read when its socket is readable,
// like a plain one, so records that come split, several to a read, or
// several to a frame all reach the client whole and in order, and the close
// handshake runs over TLS.
func TestUpstreamTLSFrames(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: true, APIKey: testAPIKey})
	defer fake.Close()
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse"}, fakedeepgram.Options{})
	trust(h, fake)
	c := h.dial("")
	c.SetReadLimit(1 << 20)
	expectType(t, c, "Welcome")
	live := h.relay.sessions.snapshot()
	if len(live) != 1 || !live[0].upstream.Polled() {
		t.Fatal("the TLS upstream is not read through its socket")
	}

	// A burst of TTS audio: records arrive back to back, many to a read.
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Stream","bytes":1920,"interval_ms":0,"count":300}`))
	for i := range 300 {
		if typ, data := read(t, c); typ != websocket.MessageBinary || len(data) != 1920 {
			t.Fatalf("message %d: %v, %d bytes", i, typ, len(data))
		}
	}
	// Three frames in one record.
	three := hex.EncodeToString([]byte("\x81\x01a\x81\x01b\x82\x02cd"))
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"`+three+`"}`))
	for _, want := range []string{"a", "b", "cd"} {
		if _, data := read(t, c); string(data) != want {
			t.Fatalf("got %q, want %q", data, want)
		}
	}
	// A frame over many records (a record holds 16 KiB at most).
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000)
	write(t, c, websocket.MessageBinary, big)
	if typ, data := read(t, c); typ != websocket.MessageBinary || !bytes.Equal(data, big) {
		t.Fatalf("the 80,000 B echo came back as %v, %d bytes", typ, len(data))
	}

	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":4000,"reason":"bye"}`))
	if ce := expectClose(t, c, 4000); ce.Reason != "bye" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if got := <-fake.Closed(); got.Code != 4000 {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestUpstreamTLSBothWays: audio up while TTS audio streams down over one TLS
// connection, so that crypto/tls is read in the socket callback while the
// other direction writes to it (run under -race).
func TestUpstreamTLSBothWays(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: true, APIKey: testAPIKey})
	defer fake.Close()
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse"}, fakedeepgram.Options{})
	trust(h, fake)
	const n = 300
	for range 3 {
		c := h.dial("")
		expectType(t, c, "Welcome")
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Stream","bytes":1920,"interval_ms":1,"count":300}`))
		sent := make(chan error, 1)
		go func() {
			for range n {
				if err := c.Write(t.Context(), websocket.MessageBinary, make([]byte, 640)); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
		echoes, tts := 0, 0
		for echoes < n || tts < 300 {
			switch _, data := read(t, c); len(data) {
			case 640:
				echoes++
			case 1920:
				tts++
			default:
				t.Fatalf("a %d B message", len(data))
			}
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// TestEarlyUpstreamBytes: bytes Deepgram sends in the same packet as its 101
// (Welcome often is) reach the client first.
func TestEarlyUpstreamBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served, hangUp := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		req, err := http.ReadRequest(bufio.NewReader(conn))
		if err != nil {
			return
		}
		sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		welcome := `{"type":"Welcome","request_id":"early"}`
		// The 101 and the first frame in one write.
		fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: %s\r\n\r\n\x81%c%s", base64.StdEncoding.EncodeToString(sum[:]), byte(len(welcome)), welcome)
		<-hangUp
	}()
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": "ws://" + ln.Addr().String() + "/v1/agent/converse"}, fakedeepgram.Options{})
	c := h.dial("")
	if m := expectType(t, c, "Welcome"); m["request_id"] != "early" {
		t.Fatalf("first message %v", m)
	}
	close(hangUp)
	<-served
	expectClose(t, c, websocket.StatusBadGateway)
}

// TestClientPipelinedFrame: a client that sends its first frame in the same
// write as its upgrade request (before the 101) loses nothing: the relay
// keeps what the HTTP server had already read.
func TestClientPipelinedFrame(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	settings := []byte(`{"type":"Settings"}`)
	frame := append([]byte{0x81, 0x80 | byte(len(settings)), 0, 0, 0, 0}, settings...) // masked with a zero key
	req := "GET /ws/deepgram-proxy/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	var texts []string
	for len(texts) < 2 {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("after %q: %v", texts, err)
		}
		payload := make([]byte, hdr[1]&0x7f) // the fake's replies are short
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatal(err)
		}
		texts = append(texts, string(payload))
	}
	if !strings.Contains(texts[0], "Welcome") || !strings.Contains(texts[1], "SettingsApplied") {
		t.Fatalf("got %q", texts)
	}
}
