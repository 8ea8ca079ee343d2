package main

import (
	"time"

	"github.com/coder/websocket"
)

// upstreamFailure is why a session could not reach Deepgram: the ending the
// client gets and, for its Error message, the words. Nothing in it comes
// from the key.
type upstreamFailure struct {
	end         ending
	description string
	status      int // Deepgram's HTTP status, 0 when none came
	cause       error
	// cancelled: the dial was cut short by the client leaving (its
	// request's end) or by the drain deadline. Deepgram did not fail.
	cancelled bool
}

// dialed is what dialling Deepgram came to: the connection (its library
// Conn, and the bare one under it for the session to take over), or why not.
type dialed struct {
	conn      *websocket.Conn
	handoff   *handoffConn
	failure   *upstreamFailure
	tries     int
	took      time.Duration
	requestID string // Deepgram's dg-request-id, what its support asks for
}
