package fakedeepgram

import (
	"context"
	"io"
	"time"

	"github.com/coder/websocket"
)

// VoiceQuery, in a session's query string (fake_voice=1), makes the fake play
// Deepgram's side of a conversation: it streams 1,920 B of binary TTS audio
// every 40 ms and a JSON event every second (strict: from SettingsApplied on;
// Lenient: from Welcome on) and swallows the client's audio instead of
// echoing it. Benchmarks use it for load.
const VoiceQuery = "fake_voice=1"

// Heard is what the fake heard of the client's audio, read as linear16
// (16-bit little-endian samples): every strict agent session's audio after
// SettingsApplied, and in Lenient mode the voice sessions of an Options.Voice
// server.
type Heard struct {
	// Messages and Bytes count the binary messages.
	Messages, Bytes int64
	// Peak is the largest absolute sample: 0 for silence, a few hundred
	// for a quiet room, thousands for a voice or a tone.
	Peak int
}

// Heard returns what the sessions have heard so far.
func (s *Server) Heard() Heard {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heard
}

// listener counts one binary message into the server's Heard as it is read.
// A message's bytes come in pieces of any length, so a sample split between
// two pieces waits in half.
type listener struct {
	s    *Server
	half []byte
	one  [1]byte
}

// hear reads one message from r into the server's Heard, with buf as the
// copy buffer: no allocation per message.
func (l *listener) hear(r io.Reader, buf []byte) error {
	l.half = nil
	if _, err := io.CopyBuffer(l, r, buf); err != nil {
		return err
	}
	l.s.mu.Lock()
	l.s.heard.Messages++
	l.s.mu.Unlock()
	return nil
}

func (l *listener) Write(p []byte) (int, error) {
	n := len(p)
	peak := 0
	if l.half != nil && len(p) > 0 {
		v := int(int16(uint16(l.half[0]) | uint16(p[0])<<8))
		peak = max(v, -v)
		p = p[1:]
		l.half = nil
	}
	for i := 0; i+1 < len(p); i += 2 {
		v := int(int16(uint16(p[i]) | uint16(p[i+1])<<8))
		peak = max(peak, v, -v)
	}
	if len(p)%2 == 1 {
		l.one[0] = p[len(p)-1]
		l.half = l.one[:]
	}
	l.s.mu.Lock()
	l.s.heard.Bytes += int64(n)
	l.s.heard.Peak = max(l.s.heard.Peak, peak)
	l.s.mu.Unlock()
	return n, nil
}

// startSpeaking plays the agent's side of a voice session until it ends.
func (ss *session) startSpeaking() {
	ss.streams.Add(1)
	go func() {
		defer ss.streams.Done()
		speak(ss.ctx, ss.c)
	}()
}

// speak plays the agent's side of a voice session until ctx ends: TTS audio
// (linear16 24 kHz: 1,920 B per 40 ms) and a JSON event each second.
func speak(ctx context.Context, c *websocket.Conn) {
	audio := make([]byte, 1920)
	event := []byte(`{"type":"ConversationText","role":"assistant","content":"Sure, I can help with that."}`)
	tick := time.NewTicker(40 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// No deadline on the writes, for the same reason as the reads.
		if c.Write(context.Background(), websocket.MessageBinary, audio) != nil {
			return
		}
		if n%25 == 0 && c.Write(context.Background(), websocket.MessageText, event) != nil {
			return
		}
	}
}
