package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

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
	settings := []byte(minimalSettings)
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
