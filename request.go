package main

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// badHandshake says what is wrong with an upgrade request that
// coder/websocket's Accept would refuse (its verifyClientRequest: HTTP/1.1,
// version 13, one Sec-WebSocket-Key that is the base64 of 16 bytes), or ""
// when nothing is. ServeHTTP asks before it dials Deepgram, which it does
// before Accept: without this, such a request opened a Deepgram connection
// only to drop it. Method, Connection and Upgrade are isWebSocketUpgrade's.
func badHandshake(r *http.Request) string {
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return "a WebSocket handshake needs HTTP/1.1"
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		return "unsupported WebSocket handshake (want version 13)"
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return "a WebSocket handshake needs one Sec-WebSocket-Key"
	}
	// RFC 6455 §4.2.1: the key is 16 random bytes in base64; the library
	// trims spaces around it first, and so does this.
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(keys[0])); err != nil || len(k) != 16 {
		return "Sec-WebSocket-Key must be the base64 of 16 bytes"
	}
	return ""
}
