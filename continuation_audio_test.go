package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// audioFrame is client audio frame seq: its number, then bytes that depend on
// it, so that a frame corrupted or cut shows.
func audioFrame(seq uint32, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint32(b, seq)
	for i := 4; i < size; i++ {
		b[i] = byte(seq) ^ byte(i)
	}
	return b
}

// checkAudioFrame returns the frame's number, or false if it is not one
// audioFrame made.
func checkAudioFrame(b []byte, size int) (uint32, bool) {
	if len(b) != size {
		return 0, false
	}
	seq := binary.BigEndian.Uint32(b)
	for i := 4; i < size; i++ {
		if b[i] != byte(seq)^byte(i) {
			return 0, false
		}
	}
	return seq, true
}

// streamAudio writes c an audio frame of size bytes every 5 ms, numbered
// from 1 as checkAudioFrame reads them, and each message of texts as it
// comes, until ctx ends or a write fails.
func streamAudio(ctx context.Context, c *websocket.Conn, size int, texts <-chan []byte) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	seq := uint32(0)
	for {
		select {
		case <-ctx.Done():
			return
		case text := <-texts:
			_ = c.Write(ctx, websocket.MessageText, text)
		case <-tick.C:
			seq++
			if c.Write(ctx, websocket.MessageBinary, audioFrame(seq, size)) != nil {
				return
			}
		}
	}
}

// moveUnderAudio streams audio frames through a call (the fake echoes each)
// and moves it with drop (a Fake control, sent once 40 echoes are back;
// none: the call moves on its own); it returns the gap the client heard (its last echo before the move to its first after) and how many
// frames were lost.
func moveUnderAudio(t testing.TB, c *websocket.Conn, drop string) (gap time.Duration, lost int) {
	const size = 640 // 20 ms of 16 kHz linear16
	ctx, cancel := context.WithCancel(context.Background())
	texts := make(chan []byte, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		streamAudio(ctx, c, size, texts)
	}()
	var got []uint32
	var lastBefore, firstAfter time.Time
	moved, after := false, 0
	for len(got) < 200 || after < 50 {
		typ, data := read(t.(*testing.T), c)
		if typ == websocket.MessageText {
			var m struct{ Type, Code string }
			_ = json.Unmarshal(data, &m)
			if m.Type == "Warning" && m.Code == continuedCode {
				moved = true
				continue
			}
			t.Fatalf("the client read %s", data)
		}
		seq, ok := checkAudioFrame(data, size)
		if !ok {
			t.Fatalf("a corrupted audio frame: %x", data[:min(16, len(data))])
		}
		if n := len(got); n > 0 && seq <= got[n-1] {
			t.Fatalf("frame %d after %d", seq, got[n-1])
		}
		if moved {
			if after++; after == 1 {
				firstAfter = time.Now()
			}
		} else {
			lastBefore = time.Now()
		}
		got = append(got, seq)
		if len(got) == 40 && drop != "" {
			texts <- []byte(drop)
		}
	}
	cancel()
	wg.Wait()
	// Every frame sent is back, but those sent to the old connection after
	// it dropped and before the move began holding.
	lost = int(got[len(got)-1]) - len(got)
	if !slices.IsSorted(got) {
		t.Fatal("frames out of order")
	}
	return firstAfter.Sub(lastBefore), lost
}

// TestMoveUnderAudio: a move while the client streams audio corrupts no
// frame and keeps their order; the frames sent during the move are held and
// arrive after it.
func TestMoveUnderAudio(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{EchoAudio: true})
	for _, drop := range []string{`{"type":"Fake.Vanish"}`, `{"type":"Fake.Fail","reason":"INTERNAL_SERVER_ERROR"}`} {
		c := startCall(t, h, minimalSettings)
		gap, lost := moveUnderAudio(t, c, drop)
		t.Logf("%s: gap %v, %d frames lost", drop, gap, lost)
		if lost > 4 {
			t.Errorf("%d frames lost: more than were in flight when the connection dropped", lost)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// TestMoveForcedWhileAgentSpeaks: a move the warning asked for, made without
// a quiet moment (Deepgram's audio never stops here), waits for the end of
// the audio message it interrupts: no frame to the client is cut.
func TestMoveForcedWhileAgentSpeaks(t *testing.T) {
	shortMoves(t, time.Minute, 500*time.Millisecond)
	h := newHarness(t, nil, fakedeepgram.Options{EchoAudio: true, MaxSession: 6 * time.Second, SessionWarning: 5 * time.Second})
	c := startCall(t, h, minimalSettings)
	gap, lost := moveUnderAudio(t, c, "")
	t.Logf("forced move: gap %v, %d frames lost", gap, lost)
	if lost != 0 {
		t.Errorf("%d frames lost in a planned move", lost)
	}
	waitForLog(t, h.logs, `"reason":"session_length"`)
}

// TestUpstreamMoveGaps: moves of one call while its client streams audio (a
// 640-byte frame every 5 ms, echoed by the fake), each made by a dropped
// Deepgram connection. Every echoed frame is checked whole and in order;
// the move's gap as the client lives it, from the drop asked to the
// SESSION_CONTINUED Warning (the time its audio waits in the relay's hold),
// is logged at p50 and p99. DGRELAY_MOVE_GAPS sets how many moves (20 by
// default), as BENCHMARKS.md reports them:
//
//	DGRELAY_MOVE_GAPS=500 go test -count=1 -v -run UpstreamMoveGaps .
func TestUpstreamMoveGaps(t *testing.T) {
	moves := 20
	if n, err := strconv.Atoi(os.Getenv("DGRELAY_MOVE_GAPS")); err == nil && n > 0 {
		moves = n
	}
	old := maxMovesPerHour
	maxMovesPerHour = moves + 1
	t.Cleanup(func() { maxMovesPerHour = old })
	// Moves spend the user's session rate: off, for as many as asked.
	h := newHarness(t, map[string]string{"LOG_LEVEL": "warn", "SESSION_RATE_PER_MINUTE": "0", "MAX_SESSIONS_PER_USER": "0"}, fakedeepgram.Options{EchoAudio: true})
	c := startCall(t, h, minimalSettings)
	const size = 640
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writes := make(chan []byte, 1)
	var wg sync.WaitGroup
	wg.Add(2)
	defer wg.Wait()
	defer cancel()
	go func() {
		defer wg.Done()
		streamAudio(ctx, c, size, writes)
	}()
	continued := make(chan time.Time, 1)
	bad := make(chan string, 1)
	go func() {
		defer wg.Done()
		var last uint32
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				continued <- time.Now()
				continue
			}
			seq, ok := checkAudioFrame(data, size)
			if !ok || seq <= last {
				bad <- "a corrupted or reordered frame"
				return
			}
			last = seq
		}
	}()
	gaps := make([]time.Duration, 0, moves)
	for range moves {
		start := time.Now()
		writes <- []byte(`{"type":"Fake.Vanish"}`)
		select {
		case at := <-continued:
			gaps = append(gaps, at.Sub(start))
		case msg := <-bad:
			t.Fatal(msg)
		case <-time.After(10 * time.Second):
			t.Fatal("no SESSION_CONTINUED")
		}
		time.Sleep(20 * time.Millisecond) // audio flows on the new connection
	}
	slices.Sort(gaps)
	// The baseline, in the same run: what a client waits to open a call
	// through the relay (dial, Settings, SettingsApplied), which a move
	// does again on its side.
	opens := make([]time.Duration, 0, 50)
	for range cap(opens) {
		start := time.Now()
		oc := startCall(t, h, minimalSettings)
		opens = append(opens, time.Since(start))
		oc.Close(websocket.StatusNormalClosure, "")
	}
	slices.Sort(opens)
	p50, p99 := gaps[len(gaps)/2], gaps[len(gaps)*99/100]
	t.Logf("%d moves under audio: gap p50 %v, p99 %v, max %v; a new call's open p50 %v (gap/open %.2f)",
		moves, p50, p99, gaps[len(gaps)-1], opens[len(opens)/2], float64(p50)/float64(opens[len(opens)/2]))
}
