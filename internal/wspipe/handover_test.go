package wspipe

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"
)

// clientMessages is n client messages (masked), message i holding bytes of
// value i; every third is cut into two fragments with a ping between, every
// fourth is text.
func clientMessages(n, size int) (stream []byte, msgs [][]byte) {
	// first is the frame's first byte: FIN and opcode.
	frame := func(first byte, payload []byte) []byte {
		b := AppendFrame(nil, first&0x0f, payload, true)
		b[0] = first
		return b
	}
	for i := range n {
		op := byte(OpBinary)
		if i%4 == 3 {
			op = OpText
		}
		payload := bytes.Repeat([]byte{'a' + byte(i%26)}, size+i%7)
		msgs = append(msgs, payload)
		if i%3 == 2 {
			half := len(payload) / 2
			stream = append(stream, frame(op, payload[:half])...)
			stream = append(stream, frame(0x80|OpPing, []byte("p"))...)
			stream = append(stream, frame(0x80, payload[half:])...)
			continue
		}
		stream = append(stream, frame(0x80|op, payload)...)
	}
	return stream, msgs
}

// messagesIn parses a frame stream to a peer into whole messages (unmasked),
// and reports whether it ends inside one.
func messagesIn(t *testing.T, b []byte) (msgs [][]byte, open bool) {
	var cur []byte
	in := false
	for len(b) > 0 {
		var h Header
		n, err := ParseHeader(b, &h)
		if err != nil || n == 0 || int64(len(b)-n) < h.Length {
			t.Fatalf("stream ends in a frame or holds a bad one (%v): %d bytes left, frame of %d", err, len(b), h.Length)
		}
		payload := append([]byte(nil), b[n:n+int(h.Length)]...)
		if h.Masked {
			Mask(payload, h.Mask, 0)
		}
		b = b[n+int(h.Length):]
		switch {
		case h.IsControl():
			continue
		case h.Opcode == OpContinuation && !in:
			t.Fatalf("a continuation with no message begun")
		case h.Opcode != OpContinuation && in:
			t.Fatalf("a message begun inside another")
		}
		in = true
		cur = append(cur, payload...)
		if h.Fin {
			msgs, cur, in = append(msgs, cur), nil, false
		}
	}
	return msgs, in
}

// FuzzHandover: however the client's bytes are cut into reads, and wherever
// a move holds and completes, the new peer gets whole messages only, each
// one the client sent, in order after those the old peer got whole; a
// message is lost only when counted (over the hold's limit) or when it was
// begun toward the old peer.
func FuzzHandover(f *testing.F) {
	f.Add(uint8(10), uint16(50), uint16(300), uint16(900), uint16(7), false, uint16(4096))
	f.Add(uint8(20), uint16(200), uint16(0), uint16(0), uint16(1), true, uint16(300))
	f.Add(uint8(5), uint16(1000), uint16(2500), uint16(2501), uint16(13), false, uint16(1))
	f.Fuzz(func(t *testing.T, n uint8, size, holdAt, completeAt, step uint16, gather bool, limit uint16) {
		stream, sent := clientMessages(int(n%40)+1, int(size%2000))
		old, next := &recordingConn{}, &recordingConn{}
		ho := NewHandover(int(limit))
		opt := Options{MaxMessage: 1 << 20, Budget: &testBudget{limit: 1 << 20}, Handover: ho}
		if gather {
			opt.Text = func(msg []byte) Verdict { return Verdict{Out: msg} }
		}
		var flow Flow
		p := New(&testOwner{}, NewPeer(&recordingConn{}, nil, Client), NewPeer(old, nil, Upstream), &flow, opt)
		p.io.init(p)
		held, completed := false, false
		for pos, rest := 0, stream; len(rest) > 0; {
			if !held && pos >= int(holdAt) {
				ho.Hold()
				held = true
			}
			if held && !completed && pos >= int(holdAt)+int(completeAt) {
				if err := ho.Complete(NewPeer(next, nil, Upstream), time.Now().Add(time.Second)); err != nil {
					t.Fatal(err)
				}
				completed = true
			}
			k := min(int(step%64)+1, len(rest))
			p.consume(rest[:k])
			rest, pos = rest[k:], pos+k
		}
		if !held {
			ho.Hold()
		}
		if !completed {
			if err := ho.Complete(NewPeer(next, nil, Upstream), time.Now().Add(time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		toOld, _ := messagesIn(t, old.out)
		toNew, open := messagesIn(t, next.out)
		if open {
			t.Fatalf("the new peer was left inside a message")
		}
		// The old peer's whole messages are the first ones sent.
		for i, m := range toOld {
			if !bytes.Equal(m, sent[i]) {
				t.Fatalf("old peer's message %d is not the one sent", i)
			}
		}
		// The new peer's are later ones, in order.
		i := len(toOld)
		for _, m := range toNew {
			for i < len(sent) && !bytes.Equal(sent[i], m) {
				i++
			}
			if i == len(sent) {
				t.Fatalf("the new peer got a message not sent, or out of order: %.20q", m)
			}
			i++
		}
		lost := len(sent) - len(toOld) - len(toNew)
		if allowed := int(ho.Dropped.Load()) + 1; lost > allowed {
			t.Fatalf("%d messages lost, %d counted as dropped (+1 cut)", lost, allowed-1)
		}
		if limit >= uint16(len(stream)) && lost > 1 {
			t.Fatalf("%d messages lost with a hold that fits them all", lost)
		}
	})
}

// TestHandoverHoldsAcrossTheMove: messages sent while a move is under way
// reach the new peer whole, after those that went to the old one.
func TestHandoverHoldsAcrossTheMove(t *testing.T) {
	stream, sent := clientMessages(6, 100)
	old, next := &recordingConn{}, &recordingConn{}
	ho := NewHandover(1 << 16)
	var flow Flow
	p := New(&testOwner{}, NewPeer(&recordingConn{}, nil, Client), NewPeer(old, nil, Upstream), &flow,
		Options{MaxMessage: 1 << 20, Budget: &testBudget{limit: 1 << 20}, Handover: ho})
	p.io.init(p)
	// Three messages (the third in two fragments) go to the old peer.
	third := frameEnd(t, stream, 3)
	p.consume(stream[:third])
	ho.Hold()
	p.consume(stream[third:])
	if got, _ := messagesIn(t, next.out); len(got) != 0 {
		t.Fatalf("the new peer got %d messages before Complete", len(got))
	}
	if err := ho.Complete(NewPeer(next, nil, Upstream), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	toOld, _ := messagesIn(t, old.out)
	toNew, _ := messagesIn(t, next.out)
	if len(toOld) != 3 || len(toNew) != 3 || !bytes.Equal(toNew[0], sent[3]) || !bytes.Equal(toNew[2], sent[5]) {
		t.Fatalf("old got %d, new got %d messages; want 3 and 3, in order", len(toOld), len(toNew))
	}
	if ho.Held.Load() == 0 {
		t.Fatal("Held counts nothing")
	}
}

// frameEnd is the offset in stream just past its k-th whole message.
func frameEnd(t *testing.T, stream []byte, k int) int {
	pos, done := 0, 0
	for done < k {
		var h Header
		n, err := ParseHeader(stream[pos:], &h)
		if err != nil || n == 0 {
			t.Fatal(fmt.Sprint("bad stream at ", pos))
		}
		pos += n + int(h.Length)
		if !h.IsControl() && h.Fin {
			done++
		}
	}
	return pos
}

// TestMoveWaitsForTheFrameItInterrupts: a pipe woken for a move (its source's
// read deadline passed) while a frame to the client is half written reads
// that frame to its end before it asks for the move, and then reads the new
// peer: the client gets whole frames from both.
func TestMoveWaitsForTheFrameItInterrupts(t *testing.T) {
	clientEnd, clientSide := loopbackPair(t)     // the browser and the relay's side
	upstreamSide, deepgramEnd := loopbackPair(t) // the relay's side and Deepgram
	nextSide, nextEnd := loopbackPair(t)         // the new Deepgram connection
	defer clientEnd.Close()
	defer deepgramEnd.Close()
	defer nextEnd.Close()
	client, upstream := NewPeer(clientSide, nil, Client), NewPeer(upstreamSide, nil, Upstream)
	asked := make(chan Ending, 1)
	o := &testOwner{peers: []*Peer{client, upstream}}
	var flow Flow
	p := New(o, upstream, client, &flow, Options{MaxMessage: 1 << 20, Budget: &testBudget{limit: 1 << 20},
		Move: func(e Ending) *Moved {
			asked <- e
			return &Moved{Peer: NewPeer(nextSide, nil, Upstream), Tell: []byte(`{"type":"Warning"}`)}
		}})
	done := make(chan struct{})
	go func() { defer close(done); p.Run() }()

	frame := AppendFrame(nil, OpBinary, bytes.Repeat([]byte{7}, 4000), false)
	if _, err := deepgramEnd.Write(frame[:1000]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	_ = upstreamSide.SetReadDeadline(time.Unix(1, 0)) // the owner wakes it
	time.Sleep(50 * time.Millisecond)
	select {
	case <-asked:
		t.Fatal("the move was asked with a frame half written")
	default:
	}
	if _, err := deepgramEnd.Write(frame[1000:]); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-asked:
		if e.Cause != Vanished {
			t.Fatalf("asked with %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the move was never asked")
	}
	next := AppendFrame(nil, OpText, []byte("from the new connection"), false)
	if _, err := nextEnd.Write(next); err != nil {
		t.Fatal(err)
	}
	tell := AppendFrame(nil, OpText, []byte(`{"type":"Warning"}`), false)
	want := append(append(append([]byte(nil), frame...), tell...), next...)
	got := make([]byte, len(want))
	_ = clientEnd.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(clientEnd, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the client got %d bytes (%v), not the whole frame, the notice and the new peer's message", len(got), err)
	}
	o.End(Ending{Cause: Closed, Src: Client, Code: 1000})
	nextEnd.Close()
	<-done
}
