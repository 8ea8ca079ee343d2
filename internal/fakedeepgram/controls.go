package fakedeepgram

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// Command is a text message that makes the fake act on its session. It is a
// test control, not a Deepgram message: accepted at any time, in any mode,
// on any path, and it counts as a client message for ClientTimeout but
// never as the agent's first message.
//
//	{"type":"Fake.Close","code":4000,"reason":"bye"}  close with code and reason
//	{"type":"Fake.Vanish"}                             drop TCP, no close frame
//	{"type":"Fake.Deaf"}                               stop reading for 3 s, then drop TCP
//	{"type":"Fake.Send","bytes":N,"binary":true}       send one message of N bytes ('a's)
//	{"type":"Fake.Stream","bytes":N,"interval_ms":M,"count":C}  send C binary messages of N bytes every M ms
//	{"type":"Fake.Raw","hex":"8a00"}                   write these bytes to the socket, framed or not
//	{"type":"Fake.Raw","hex":"8a00","vanish":true}     the same, then drop TCP, the FIN in the bytes' segment
//	{"type":"Fake.Echo",...}                           send this message back whole, as text
//	{"type":"Fake.Tell","message":{...}}               send message as a text message (a Deepgram event)
//	{"type":"Fake.Fail","reason":"INTERNAL_SERVER_ERROR"}  a fatal agent Error with that code, then the close
type Command struct {
	Type       string          `json:"type"`
	Code       int             `json:"code"`
	Reason     string          `json:"reason"`
	Bytes      int             `json:"bytes"`
	Binary     bool            `json:"binary"`
	IntervalMS int             `json:"interval_ms"`
	Count      int             `json:"count"`
	Hex        string          `json:"hex"`
	Vanish     bool            `json:"vanish"`
	Message    json.RawMessage `json:"message"`
}

// deafFor is how long Fake.Deaf stops reading.
const deafFor = 3 * time.Second

// control runs data if it is a Fake.* command: handled says whether it was
// one, end (when not nil) that the session is over.
func (ss *session) control(data []byte) (end *Closed, handled bool) {
	if !bytes.Contains(data, []byte(`"Fake.`)) {
		return nil, false
	}
	var cmd Command
	if json.Unmarshal(data, &cmd) != nil || !strings.HasPrefix(cmd.Type, "Fake.") {
		return nil, false
	}
	c := ss.c
	fail := func(err error) (*Closed, bool) {
		e := ss.ended(err)
		return &e, true
	}
	switch cmd.Type {
	case "Fake.Close":
		e := ss.closeWith(websocket.StatusCode(cmd.Code), cmd.Reason, nil)
		return &e, true
	case "Fake.Vanish":
		return &Closed{Code: -1}, true
	case "Fake.Fail":
		e := ss.fatal(cmd.Reason, "The fake failed as told.")
		return &e, true
	case "Fake.Deaf":
		// A backend that stopped reading: the relay's writes back up,
		// and it gives up on them. Bounded, since what the relay sent
		// before it hung up is still unread.
		time.Sleep(deafFor)
		return &Closed{Code: -1}, true
	case "Fake.Send":
		mt := websocket.MessageText
		if cmd.Binary {
			mt = websocket.MessageBinary
		}
		if err := c.Write(ss.ctx, mt, bytes.Repeat([]byte{'a'}, cmd.Bytes)); err != nil {
			return fail(err)
		}
	case "Fake.Raw":
		// What a broken upstream would send; the library's own writes
		// are idle while this runs.
		b, err := hex.DecodeString(cmd.Hex)
		if err == nil && cmd.Vanish {
			e := vanishAfter(ss.raw, b)
			return &e, true
		}
		if err == nil {
			_, err = ss.raw.Write(b)
		}
		if err != nil {
			return fail(err)
		}
	case "Fake.Stream":
		ss.streams.Add(1)
		go func() {
			defer ss.streams.Done()
			stream(ss.ctx, c, cmd)
		}()
	case "Fake.Echo":
		if err := c.Write(ss.ctx, websocket.MessageText, data); err != nil {
			return fail(err)
		}
	case "Fake.Tell":
		if len(cmd.Message) > 0 {
			if err := c.Write(ss.ctx, websocket.MessageText, cmd.Message); err != nil {
				return fail(err)
			}
		}
	}
	return nil, true
}

// Tell sends msg as a text message to every live session, as Deepgram
// sends an event of its own accord (an Error, a ConversationText), and
// returns how many sessions it reached.
func (s *Server) Tell(msg []byte) int {
	s.mu.Lock()
	conns := make([]*websocket.Conn, 0, len(s.live))
	for c := range s.live {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	told := 0
	for _, c := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if c.Write(ctx, websocket.MessageText, msg) == nil {
			told++
		}
		cancel()
	}
	return told
}

// stream sends cmd.Count binary messages of cmd.Bytes, one every
// cmd.IntervalMS, as Deepgram sends TTS audio.
func stream(ctx context.Context, c *websocket.Conn, cmd Command) {
	frame := make([]byte, cmd.Bytes)
	interval := time.Duration(cmd.IntervalMS) * time.Millisecond
	for i := 0; i < cmd.Count; i++ {
		if err := c.Write(ctx, websocket.MessageBinary, frame); err != nil {
			return
		}
		if interval > 0 {
			select {
			case <-time.After(interval):
			case <-ctx.Done():
				return
			}
		}
	}
}

// vanishAfter writes b and drops the TCP connection under raw with no close
// frame and, over TLS, no close_notify. The socket is corked first, so the
// bytes and the FIN leave in one segment: the peer's poller sees one edge for
// both, the case a reader that stops at a short read misses.
func vanishAfter(raw net.Conn, b []byte) Closed {
	tcp := raw
	if tc, ok := raw.(*tls.Conn); ok {
		tcp = tc.NetConn()
	}
	if sc, ok := tcp.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = cork(fd) })
		}
	}
	_, _ = raw.Write(b)
	_ = tcp.Close()
	return Closed{Code: -1}
}
