package fakedeepgram

import (
	"bytes"
	"context"
	"encoding/json"
	"io"

	"github.com/coder/websocket"
)

// lenient runs a session with Deepgram's protocol off (Options.Lenient), on
// any path: Welcome unless NoWelcome, SettingsApplied for every Settings,
// KeepAlive swallowed, Fake.* commands obeyed, every other message echoed
// with its type and bytes; no order rules, no timers. In voice mode the
// client's audio is swallowed instead, and the agent speaks from Welcome on.
func (ss *session) lenient() Closed {
	ss.begin()
	defer ss.finish()
	c, opts := ss.c, ss.opts
	if !opts.NoWelcome {
		if err := ss.send(welcome{Type: "Welcome", RequestID: ss.id}); err != nil {
			return closedBy(err)
		}
	}
	if ss.voice {
		ss.startSpeaking()
		return ss.lenientVoice()
	}
	for {
		typ, data, err := c.Read(ss.ctx)
		if err != nil {
			return ss.ended(err)
		}
		if typ == websocket.MessageBinary {
			if err := c.Write(context.Background(), typ, data); err != nil {
				return ss.ended(err)
			}
			continue
		}
		ss.s.record(data)
		if end, ok := ss.control(data); ok {
			if end != nil {
				return *end
			}
			continue
		}
		reply := data
		switch {
		case isType(data, "Settings"):
			reply = []byte(`{"type":"SettingsApplied"}`)
		case isType(data, "KeepAlive"):
			continue
		}
		if err := c.Write(ss.ctx, websocket.MessageText, reply); err != nil {
			return ss.ended(err)
		}
	}
}

// lenientVoice is the benchmark's loop: audio heard, not echoed, and read
// without allocating or arming a timer (coder/websocket arms one per read
// under a context that can end): under a benchmark's load this fake shares
// a core with the clients. Closing the connection ends the read. Only an
// Options.Voice server records what it hears.
func (ss *session) lenientVoice() Closed {
	c, opts := ss.c, ss.opts
	discard := make([]byte, 4096)
	lis := &listener{s: ss.s}
	for {
		typ, r, err := c.Reader(context.Background())
		if err != nil {
			return ss.ended(err)
		}
		if typ == websocket.MessageBinary {
			if !opts.Voice {
				if _, err := io.CopyBuffer(io.Discard, r, discard); err != nil {
					return ss.ended(err)
				}
				continue
			}
			if err := lis.hear(r, discard); err != nil {
				return ss.ended(err)
			}
			continue
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return ss.ended(err)
		}
		if opts.Voice {
			ss.s.record(data)
		}
		switch {
		case isType(data, "KeepAlive"):
			continue
		case isType(data, "Settings"):
			data = []byte(`{"type":"SettingsApplied"}`)
		}
		if err := c.Write(context.Background(), websocket.MessageText, data); err != nil {
			return ss.ended(err)
		}
	}
}

func isType(data []byte, typ string) bool {
	var m struct {
		Type string `json:"type"`
	}
	return bytes.Contains(data, []byte(typ)) && json.Unmarshal(data, &m) == nil && m.Type == typ
}
