package main

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// rawRequest writes req as it is to the relay's public port and reads one
// response: for requests Go's client will not send (HTTP/1.0, a header
// twice).
func rawRequest(t *testing.T, h *harness, req string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp
}

// TestMalformedHandshakeDialsNothing: an upgrade request that coder/websocket's
// Accept would refuse gets 400 before Deepgram is dialled, so it costs no
// upstream handshake (and no Deepgram connection opened only to be dropped).
func TestMalformedHandshakeDialsNothing(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	const key = "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455's example: 16 bytes
	request := func(proto string, headers ...string) string {
		return "GET /ws/deepgram-proxy/?service=agent " + proto + "\r\nHost: relay.example\r\n" +
			"Connection: Upgrade\r\nUpgrade: websocket\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	}
	cases := []struct {
		name string
		req  string
	}{
		{"HTTP/1.0", request("HTTP/1.0", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: "+key)},
		{"no key", request("HTTP/1.1", "Sec-WebSocket-Version: 13")},
		{"empty key", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: ")},
		{"key not base64", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: not a key!")},
		{"key of 15 bytes", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA")},
		{"key of 17 bytes", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=")},
		{"key base64url", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: ____________________-w==")},
		{"key twice", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: "+key, "Sec-WebSocket-Key: "+key)},
		{"two keys in one header", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: "+key+", "+key)},
		{"version 8", request("HTTP/1.1", "Sec-WebSocket-Version: 8", "Sec-WebSocket-Key: "+key)},
		{"no version", request("HTTP/1.1", "Sec-WebSocket-Key: "+key)},
	}
	for _, tc := range cases {
		before := len(h.fake.Handshakes())
		resp := rawRequest(t, h, tc.req)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", tc.name, resp.StatusCode)
		}
		if n := len(h.fake.Handshakes()); n != before {
			t.Errorf("%s: Deepgram was dialled for a handshake the relay refuses", tc.name)
		}
	}

	// The same request with a good key (padded with spaces, which RFC 6455
	// allows) opens a session.
	before := len(h.fake.Handshakes())
	resp := rawRequest(t, h, request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key:  "+key+" "))
	if resp.StatusCode != http.StatusSwitchingProtocols || len(h.fake.Handshakes()) != before+1 {
		t.Errorf("a good handshake: status %d, %d upstream handshakes; want 101 and 1", resp.StatusCode, len(h.fake.Handshakes())-before)
	}
	h.upstreamClosed()
}

// FuzzHandshakeAgreesWithAccept holds the relay's pre-dial checks to
// coder/websocket's own: a request passes isWebSocketUpgrade and badHandshake
// exactly when Accept's verification passes (Accept then fails only to
// hijack the recorder, 501). A request the relay lets through and Accept
// refuses would dial Deepgram for nothing.
func FuzzHandshakeAgreesWithAccept(f *testing.F) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", key, "")
	f.Add(uint8(0), "GET", "Upgrade", "websocket", "13", key, "")
	f.Add(uint8(1), "POST", "Upgrade", "websocket", "13", key, "")
	f.Add(uint8(1), "GET", "keep-alive, upgrade", "WebSocket", "13", key, "")
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", key, key)
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", "AAAAAAAAAAAAAAAAAAAA", "")
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", key+","+key, "")
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "8", key, "")
	f.Add(uint8(1), "GET", "close", "websocket", "13", key, "")
	f.Add(uint8(1), "GET", "Upgrade", "h2c", "13", key, "")
	f.Add(uint8(1), "GET", ",", ",", "13", " "+key+" ", "")
	f.Fuzz(func(t *testing.T, minor uint8, method, connection, upgrade, version, key1, key2 string) {
		r := httptest.NewRequest(http.MethodGet, "/ws/deepgram-proxy/", nil)
		r.Method, r.Proto, r.ProtoMajor, r.ProtoMinor = method, "HTTP/1."+strconv.Itoa(int(minor)), 1, int(minor)
		for name, v := range map[string]string{"Connection": connection, "Upgrade": upgrade, "Sec-WebSocket-Version": version, "Sec-WebSocket-Key": key1} {
			if v != "" {
				r.Header.Set(name, v)
			}
		}
		if key2 != "" {
			r.Header.Add("Sec-WebSocket-Key", key2)
		}
		relayPasses := isWebSocketUpgrade(r) && badHandshake(r) == ""
		w := httptest.NewRecorder()
		_, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		acceptPasses := err != nil && w.Code == http.StatusNotImplemented
		if relayPasses != acceptPasses {
			t.Fatalf("relay passes: %v, Accept's checks pass: %v (%d %v) for %s %s %q",
				relayPasses, acceptPasses, w.Code, err, method, r.Proto, r.Header)
		}
	})
}
