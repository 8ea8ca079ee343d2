package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// wsMessage is one message a session carries: its type and its bytes.
type wsMessage struct {
	typ  websocket.MessageType
	data []byte
}

// mixedMessages is a reproducible stream of text and binary messages from
// 0 B to exactly 1 MiB, mostly audio-sized, as a session carries them.
func mixedMessages(seed uint64, n int) []wsMessage {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	sizes := []int{0, 1, wspipe.ReadBufferSize - 1, wspipe.ReadBufferSize, wspipe.ReadBufferSize + 1, 1 << 20}
	out := make([]wsMessage, n)
	for i := range out {
		var size int
		switch p := rng.IntN(100); {
		case i < len(sizes):
			size = sizes[i]
		case p < 90:
			size = rng.IntN(4096)
		case p < 99:
			size = rng.IntN(128 << 10)
		default:
			size = rng.IntN(1<<20 + 1)
		}
		data := make([]byte, size)
		typ := websocket.MessageBinary
		if rng.IntN(3) == 0 {
			// Text the fake echoes as is: no JSON type it acts on.
			typ = websocket.MessageText
			for j := range data {
				data[j] = byte('a' + rng.IntN(26))
			}
		} else {
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
		}
		out[i] = wsMessage{typ, data}
	}
	rng.Shuffle(n-len(sizes), func(i, j int) {
		i, j = i+len(sizes), j+len(sizes)
		out[i], out[j] = out[j], out[i]
	})
	return out
}

// TestRelayKeepsEveryMessage sends thousands of mixed messages through
// several concurrent sessions and checks each echo's type, bytes and order.
func TestRelayKeepsEveryMessage(t *testing.T) {
	// Lenient: raw framing, random text and binary echoed as they are;
	// Deepgram's protocol is beside the point.
	h := newHarness(t, nil, fakedeepgram.Options{Lenient: true})
	const sessions, perSession = 4, 600
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := 0; s < sessions; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- relayAndCheck(h, uint64(s+1), perSession)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func relayAndCheck(h *harness, seed uint64, n int) error {
	c, err := h.tryDial("service=agent", nil)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	msgs := mixedMessages(seed, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Writing and reading at once: large messages would otherwise fill
	// every buffer on the way and stall both sides.
	werr := make(chan error, 1)
	go func() {
		for _, m := range msgs {
			if err := c.Write(ctx, m.typ, m.data); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	typ, data, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText || !bytes.Contains(data, []byte(`"Welcome"`)) {
		return fmt.Errorf("session %d: want Welcome first, got %v %.60q %v", seed, typ, data, err)
	}
	for i, m := range msgs {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("session %d: message %d: %v", seed, i, err)
		}
		if typ != m.typ || !bytes.Equal(data, m.data) {
			return fmt.Errorf("session %d: message %d: got %v of %d B, want %v of %d B", seed, i, typ, len(data), m.typ, len(m.data))
		}
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("session %d: write: %v", seed, err)
	}
	return c.Close(websocket.StatusNormalClosure, "")
}

// TestSettingsAtOpenArrives sends Settings the instant the socket opens, as
// the React component does, and expects Deepgram to have it.
func TestSettingsAtOpenArrives(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.dial("service=agent&token=abc")
	settings := []byte(`{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}},"agent":{}}`)
	write(t, c, websocket.MessageText, settings)
	expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	texts := h.fake.Texts()
	if len(texts) != 1 || !bytes.Equal(texts[0], settings) {
		t.Fatalf("upstream received %q, want exactly the Settings", texts)
	}
}

// TestUpstreamTLSBothWays: audio up while TTS audio streams down over one TLS
// connection, so that crypto/tls is read in the socket callback while the
// other direction writes to it (run under -race).
func TestUpstreamTLSBothWays(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: true, APIKey: testAPIKey, EchoAudio: true})
	defer fake.Close()
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse"}, fakedeepgram.Options{})
	trust(h, fake)
	const n = 300
	for range 3 {
		c := h.agentSession("")
		write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Stream","bytes":1920,"interval_ms":1,"count":300}`))
		sent := make(chan error, 1)
		go func() {
			for range n {
				if err := c.Write(t.Context(), websocket.MessageBinary, make([]byte, 640)); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
		echoes, tts := 0, 0
		for echoes < n || tts < 300 {
			switch _, data := read(t, c); len(data) {
			case 640:
				echoes++
			case 1920:
				tts++
			default:
				t.Fatalf("a %d B message", len(data))
			}
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// TestFramesSplitAnywhere: frames that arrive a byte at a time, a message in
// fragments with a ping between them, and 16- and 64-bit lengths all reach
// Deepgram whole, and Deepgram's pong comes back.
func TestFramesSplitAnywhere(t *testing.T) {
	// Lenient: raw framing, each message echoed as it arrived.
	h := newHarness(t, nil, fakedeepgram.Options{Lenient: true})
	c := h.rawDial("")
	audio := bytes.Repeat([]byte{0xa5, 0x01, 0xff}, 100) // 300 B: a 16-bit length
	big := bytes.Repeat([]byte{7}, 70000)                // a 64-bit length
	var stream []byte
	stream = append(stream, clientFrame(0x82, audio)...)
	stream = append(stream, clientFrame(0x01, []byte(`{"type":"Inject`))...) // text, not final
	stream = append(stream, clientFrame(0x89, []byte("are you there"))...)   // ping between fragments
	stream = append(stream, clientFrame(0x00, []byte(`UserMessage",`))...)   // continuation
	stream = append(stream, clientFrame(0x80, []byte(`"content":"hi"}`))...) // final continuation
	c.trickle(stream)
	c.send(clientFrame(0x82, big))

	want := []struct {
		op      byte
		payload []byte
	}{
		{wspipe.OpBinary, audio},
		{wspipe.OpPong, []byte("are you there")},
		{wspipe.OpText, []byte(`{"type":"InjectUserMessage","content":"hi"}`)},
		{wspipe.OpBinary, big},
	}
	for _, w := range want {
		op, p := c.read()
		if op != w.op || !bytes.Equal(p, w.payload) {
			t.Fatalf("got opcode %x, %d bytes %.40q; want opcode %x, %d bytes %.40q", op, len(p), p, w.op, len(w.payload), w.payload)
		}
	}
	c.send(clientFrame(0x88, wspipe.ClosePayload(4000, "done")))
	if reason := c.expectClose(4000); reason != "" {
		t.Fatalf("echo reason %q, want none", reason)
	}
	if got := h.upstreamClosed(); got.Code != 4000 || got.Reason != "done" {
		t.Fatalf("upstream got %+v", got)
	}
}
