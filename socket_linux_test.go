package main

import (
	"encoding/hex"
	"net"
	"testing"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"
)

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
