package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"
)

// TestClientProtocolErrors: a client frame that breaks RFC 6455 gets 1002 and
// Deepgram a normal close; nothing of the bad frame is passed on.
func TestClientProtocolErrors(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	unmasked := []byte{0x82, 0x03, 1, 2, 3}
	hugeLength := []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	cases := []struct {
		name  string
		frame []byte
	}{
		{"unmasked frame", unmasked},
		{"reserved bit", clientFrame(0xc2, []byte("x"))},
		{"unknown opcode", clientFrame(0x83, []byte("x"))},
		{"fragmented ping", clientFrame(0x09, []byte("x"))},
		{"ping over 125 bytes", clientFrame(0x89, make([]byte, 126))},
		{"continuation first", clientFrame(0x80, []byte("x"))},
		{"text inside a fragmented message", append(clientFrame(0x01, []byte("a")), clientFrame(0x81, []byte("b"))...)},
		{"close with one byte", clientFrame(0x88, []byte{3})},
		{"close with 1005 on the wire", clientFrame(0x88, []byte{0x03, 0xed})},
		{"close with a reason not UTF-8", clientFrame(0x88, []byte{0x03, 0xe8, 0xff})},
		{"64-bit length with its top bit", hugeLength},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The eleven sessions come from one address, over its cap of
			// five: each must be gone before the next opens.
			h.settled()
			c := h.rawDial("")
			c.send(tc.frame)
			if reason := c.expectClose(websocket.StatusProtocolError); reason != "protocol error" {
				t.Fatalf("reason %q", reason)
			}
			if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client protocol error" {
				t.Fatalf("upstream got %+v", got)
			}
		})
	}
	waitForLog(t, h.logs, `"cause":"protocol_error"`)
}

// TestUpstreamProtocolError: Deepgram sending a masked frame is a gateway
// failure for the client (1014) and a protocol error for Deepgram (1002).
func TestUpstreamProtocolError(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	masked := hex.EncodeToString([]byte{0x82, 0x81, 1, 2, 3, 4, 5})
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"`+masked+`"}`))
	if ce := expectClose(t, c, websocket.StatusBadGateway); ce.Reason != "upstream protocol error" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if got := h.upstreamClosed(); got.Code != websocket.StatusProtocolError {
		t.Fatalf("upstream got %+v, want 1002", got)
	}
}

// TestFragmentedMessageTooBig: the limit counts a message's fragments
// together; the sender gets 1009 and Deepgram a normal close.
func TestFragmentedMessageTooBig(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_MESSAGE_BYTES": "1000"}, fakedeepgram.Options{})
	c := h.rawDial("")
	c.send(clientFrame(0x02, make([]byte, 600)))
	c.send(clientFrame(0x80, make([]byte, 600)))
	c.expectClose(websocket.StatusMessageTooBig)
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "client message too big" {
		t.Fatalf("upstream got %+v", got)
	}
}

// TestContinuationLengthOverflow: a first fragment, then a continuation that
// declares 2^63-1 bytes. The message length check must not overflow: the
// session ends with 1009 at once, no counter goes negative (a negative Add
// panics the process), and a text message gathered for a policy gives its
// bytes back.
func TestContinuationLengthOverflow(t *testing.T) {
	policy := pinnedPolicy
	h := newHarness(t, map[string]string{"SETTINGS_POLICY": policy}, fakedeepgram.Options{})
	huge := []byte{0x80, 0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}
	for _, first := range []byte{wspipe.OpBinary, wspipe.OpText} {
		c := h.rawDial("")
		c.send(clientFrame(first, bytes.Repeat([]byte("a"), 100))) // FIN=0
		c.send(huge)
		c.send(make([]byte, 4096)) // some of the 2^63-1 bytes
		c.expectClose(websocket.StatusMessageTooBig)
		c.conn.Close() // its close answer would be read as payload
		if got := h.upstreamClosed(); got.Reason != "client message too big" {
			t.Fatalf("opcode %d: upstream got %+v", first, got)
		}
		h.settled()
	}
	if held := h.relay.texts.held(); held != 0 {
		t.Fatalf("%d bytes left in the text budget", held)
	}
	for _, line := range strings.Split(scrapeHandler(t, h), "\n") {
		if strings.HasPrefix(line, "dgrelay_bytes_total{") || strings.HasPrefix(line, "dgrelay_messages_total{") {
			if f := strings.Fields(line); len(f) != 2 || strings.HasPrefix(f[1], "-") || len(f[1]) > 12 {
				t.Fatalf("counter %q", line)
			}
		}
	}
}

// TestUpstreamFINWithLastBytes: Deepgram's last frame and its FIN arrive in
// one segment, so the poller gives one edge for both. The relay must still
// see the end at once (1014 to the client), over a plain socket and over
// TLS with no close_notify, not wait for IDLE_TIMEOUT.
func TestUpstreamFINWithLastBytes(t *testing.T) {
	for _, tls := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "tls"}[tls]
		t.Run(name, func(t *testing.T) {
			fake := fakedeepgram.Start(fakedeepgram.Options{TLS: tls, APIKey: testAPIKey})
			defer fake.Close()
			h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse", "IDLE_TIMEOUT": "0"}, fakedeepgram.Options{})
			if tls {
				trust(h, fake)
			}
			last := hex.EncodeToString(wspipe.AppendFrame(nil, wspipe.OpText, []byte(`{"type":"Last"}`), false))
			for i := range 5 {
				c := h.dial("")
				expectType(t, c, "Welcome")
				write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"`+last+`","vanish":true}`))
				expectType(t, c, "Last")
				if ce := expectClose(t, c, websocket.StatusBadGateway); ce.Reason != "upstream went away" {
					t.Fatalf("session %d: reason %q", i, ce.Reason)
				}
				<-fake.Closed()
			}
		})
	}
}

// TestClientFINWithLastBytes: the client's last frame and its FIN arrive in
// one segment; Deepgram gets the frame and then 1001 at once.
func TestClientFINWithLastBytes(t *testing.T) {
	h := newHarness(t, map[string]string{"IDLE_TIMEOUT": "0"}, fakedeepgram.Options{})
	for i := range 5 {
		c := h.rawDial("")
		rc, err := c.conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		c.send(clientFrame(0x81, []byte(minimalSettings)))
		if _, p := c.read(); !bytes.Contains(p, []byte("SettingsApplied")) {
			t.Fatalf("session %d: %q, want SettingsApplied", i, p)
		}
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1) })
		// KeepAlive, which the fake swallows: an echo would meet the
		// closed socket and its RST would wake the relay anyway.
		c.send(clientFrame(0x81, []byte(`{"type":"KeepAlive"}`)))
		c.conn.Close()
		if got := h.upstreamClosed(); got.Code != websocket.StatusGoingAway || got.Reason != "client went away" {
			t.Fatalf("session %d: upstream got %+v", i, got)
		}
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
	h := newHarness(t, map[string]string{"MAX_MESSAGE_BYTES": "1000"}, fakedeepgram.Options{EchoAudio: true})

	t.Run("from the client", func(t *testing.T) {
		c := h.agentSession("")
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
	h := newHarness(t, nil, fakedeepgram.Options{EchoAudio: true})
	c := h.agentSession("service=agent&token=user-jwt-SECRET&model=m")
	write(t, c, websocket.MessageBinary, make([]byte, 640))
	read(t, c)
	c.Close(websocket.StatusNormalClosure, "bye")
	h.upstreamClosed()
	h.relay.drain(time.Second) // waits for the handler to log
	logs := h.logs.String()
	for _, want := range []string{`"message":"session end"`, `"severity":"INFO"`, `"service":"agent"`,
		`"up_messages":2`, fmt.Sprintf(`"up_bytes":%d`, len(minimalSettings)+640), `"down_messages":3`, `"closed_by":"client"`,
		`"client_close":1000`, `"upstream_close":1000`, `"dg_request_id":"`, `"dial_ms":`, `"dial_tries":1`, `"remote":"127.0.0.1"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("session end log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "user-jwt-SECRET") || strings.Contains(logs, "model=m") {
		t.Errorf("a token or the raw query is logged:\n%s", logs)
	}
}
