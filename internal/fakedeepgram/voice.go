package fakedeepgram

import (
	"context"
	"time"

	"github.com/coder/websocket"
)

// VoiceQuery, in a session's query string (fake_voice=1), makes the fake play
// Deepgram's side of a conversation: from Welcome on it streams 1,920 B of
// binary TTS audio every 40 ms and a JSON event every second, swallows the
// client's audio instead of echoing it, and answers Settings with
// SettingsApplied. Benchmarks use it for load.
const VoiceQuery = "fake_voice=1"

// Heard is what the voice sessions of an Options.Voice server heard of the
// client's audio, read as linear16 (16-bit little-endian samples).
type Heard struct {
	// Messages and Bytes count the binary messages.
	Messages, Bytes int64
	// Peak is the largest absolute sample: 0 for silence, a few hundred
	// for a quiet room, thousands for a voice or a tone.
	Peak int
}

// Heard returns what the voice sessions have heard so far (Options.Voice).
func (s *Server) Heard() Heard {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heard
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

// listener counts one binary message into the server's Heard as it is read.
// A message's bytes come in pieces of any length, so a sample split between
// two pieces waits in half.
type listener struct {
	s    *Server
	half []byte
}

func (l *listener) Write(p []byte) (int, error) {
	n := len(p)
	samples := p
	if l.half != nil {
		samples = append(l.half, p...)
	}
	peak := 0
	for i := 0; i+1 < len(samples); i += 2 {
		v := int(int16(uint16(samples[i]) | uint16(samples[i+1])<<8))
		peak = max(peak, v, -v)
	}
	l.half = nil
	if len(samples)%2 == 1 {
		l.half = []byte{samples[len(samples)-1]}
	}
	l.s.mu.Lock()
	l.s.heard.Bytes += int64(n)
	l.s.heard.Peak = max(l.s.heard.Peak, peak)
	l.s.mu.Unlock()
	return n, nil
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
