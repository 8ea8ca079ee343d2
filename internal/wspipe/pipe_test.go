package wspipe

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"testing"
)

// relayChunks runs Deepgram's bytes, cut into chunks, through an
// upstream-to-client pipe and returns what the client was sent and how the
// session ended. With gather, text is read whole through a filter, against
// a budget of 500 bytes, which must be whole again once the pipe is done.
func relayChunks(chunks [][]byte, gather bool) ([]byte, Ending) {
	client, upstream := &recordingConn{}, &recordingConn{}
	o := &testOwner{}
	var flow Flow
	budget := &testBudget{limit: 500}
	opt := Options{MaxMessage: 1000, Budget: budget}
	if gather {
		opt.Text = func(msg []byte) Verdict { return Verdict{Out: msg} }
	}
	p := New(o, NewPeer(upstream, nil, Upstream), NewPeer(client, nil, Client), &flow, opt)
	p.io.init(p)
	var in int
	for _, c := range chunks {
		in += len(c)
		if p.consume(c) {
			break
		}
	}
	p.dropGathered() // as Run does when it returns
	if held := budget.used.Load(); held != 0 {
		panic(fmt.Sprintf("%d bytes left in the text budget", held))
	}
	// The counters count what came, never what a header claims.
	if n := flow.Bytes.Load(); n < 0 || n > int64(in) {
		panic(fmt.Sprintf("%d bytes counted of %d read", n, in))
	}
	return client.out, o.result()
}

// FuzzPipeSplits: however Deepgram's bytes are cut into reads, the client is
// sent the same bytes and the session ends the same way, and no input makes
// the frame parser panic.
func FuzzPipeSplits(f *testing.F) {
	frame := func(first byte, payload []byte) []byte { return AppendFrame(nil, first&0x0f, payload, false) }
	var stream []byte
	stream = append(stream, frame(OpText, []byte(`{"type":"Welcome"}`))...)
	stream = append(stream, frame(OpBinary, bytes.Repeat([]byte{1}, 300))...)
	stream = append(stream, 0x01, 2, 'a', 'b', 0x89, 1, 'p', 0x80, 1, 'c') // fragments around a ping
	stream = append(stream, frame(OpClose, ClosePayload(4000, "bye"))...)
	f.Add(stream, uint16(7), uint16(3))
	f.Add(frame(OpBinary, make([]byte, 1001)), uint16(1), uint16(2))                                           // too big
	f.Add([]byte{0x82, 0x7f, 0xff, 0, 0, 0, 0, 0, 0, 0}, uint16(2), uint16(1))                                 // bad length
	f.Add([]byte{0x82, 0x81, 1, 2, 3, 4, 5, 0x88, 0}, uint16(3), uint16(5))                                    // masked
	f.Add(append(frame(OpBinary, []byte("x")), 0x88, 1, 3), uint16(4), uint16(1))                              // one-byte close
	f.Add(append(frame(OpText, make([]byte, 300)), frame(OpText, make([]byte, 300))...), uint16(5), uint16(9)) // past the text budget when gathered
	// Lengths at the limits, in a continuation after a first fragment, so
	// that the message's length is a sum: 0, the limit, one past it, 2^63-1.
	for _, n := range []uint64{0, 1000, 1001, 1<<63 - 1} {
		for _, op := range []byte{OpBinary, OpText} {
			for _, seed := range []uint16{1, 2} { // odd: text gathered
				huge := binary.BigEndian.AppendUint64([]byte{0x80, 127}, n)
				f.Add(append(append([]byte{op, 100}, make([]byte, 100)...), huge...), seed, uint16(3))
			}
		}
	}
	f.Add([]byte{0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint16(8), uint16(1)) // 2^63-1 in one frame
	f.Fuzz(func(t *testing.T, data []byte, first, step uint16) {
		// An odd first also reads text whole through a filter (as the
		// secret scrub does), against a text budget of 500 bytes.
		gather := first%2 == 1
		whole, wholeEnd := relayChunks([][]byte{data}, gather)
		var chunks [][]byte
		size := int(first%64) + 1
		for rest := data; len(rest) > 0; size = int(step%16) + 1 {
			n := min(size, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		split, splitEnd := relayChunks(chunks, gather)
		if !bytes.Equal(whole, split) {
			t.Fatalf("cut into %d reads the client got %x, whole %x", len(chunks), split, whole)
		}
		if wholeEnd != splitEnd {
			t.Fatalf("cut into %d reads the session ended %+v, whole %+v", len(chunks), splitEnd, wholeEnd)
		}
	})
}

// TestGatheredTextDroppedOnClose: a text message the scrub is gathering when
// the session ends is not sent after the close.
func TestGatheredTextDroppedOnClose(t *testing.T) {
	client, upstream := &recordingConn{}, &recordingConn{}
	o := &testOwner{}
	budget := &testBudget{limit: 1 << 20}
	scrub := func(msg []byte) Verdict { return Verdict{Out: msg} }
	var flow Flow
	p := New(o, NewPeer(upstream, nil, Upstream), NewPeer(client, nil, Client), &flow, Options{MaxMessage: 1 << 20, Text: scrub, Budget: budget})
	server := func(first byte, payload string) []byte {
		b := AppendFrame(nil, first&0x0f, []byte(payload), false)
		b[0] = first
		return b
	}
	p.consume(server(0x01, `{"type":"Conversation`)) // text, not final
	o.End(Ending{Cause: Closed, Src: Client, Code: 4000})
	p.consume(server(0x80, `Text"}`))
	p.consume(server(0x88, string(ClosePayload(1000, ""))))

	want := AppendFrame(nil, OpClose, ClosePayload(4000, ""), false)
	if !bytes.Equal(client.out, want) {
		t.Fatalf("client was sent %q, want only the 4000 close %q", client.out, want)
	}
	if held := budget.used.Load(); held != 0 {
		t.Errorf("%d bytes still counted in the text budget", held)
	}
}

// TestPipeRunsPassedAsOneWrite: the frames of one read that go on as they
// came leave in one write; a frame the pipe builds itself (a scrubbed ping)
// splits the run, in order.
func TestPipeRunsPassedAsOneWrite(t *testing.T) {
	client := &countingConn{}
	o := &testOwner{}
	var flow Flow
	scrub := func(b []byte, limit int) []byte { return bytes.ReplaceAll(b, []byte("key"), []byte("***")) }
	p := New(o, NewPeer(&recordingConn{}, nil, Upstream), NewPeer(client, nil, Client), &flow, Options{MaxMessage: 1 << 20, Scrub: scrub})
	a, b := AppendFrame(nil, OpBinary, []byte("a"), false), AppendFrame(nil, OpBinary, []byte("bb"), false)
	ping := AppendFrame(nil, OpPing, []byte("key"), false)
	p.consume(bytes.Join([][]byte{a, b, ping, a, b}, nil))
	want := bytes.Join([][]byte{a, b, AppendFrame(nil, OpPing, []byte("***"), false), a, b}, nil)
	if !bytes.Equal(client.out, want) || client.writes != 3 {
		t.Fatalf("%d writes of %x, want 3 of %x", client.writes, client.out, want)
	}
}

// countingConn is a recordingConn that counts writes.
type countingConn struct {
	recordingConn
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	return c.recordingConn.Write(p)
}

// failingConn is a destination whose every write fails.
type failingConn struct{ recordingConn }

func (c *failingConn) Write([]byte) (int, error) { return 0, net.ErrClosed }

// TestCloseSentIsWhatWasWritten: Flow.CloseSent is the code of a close that
// reached the socket, and stays 0 when the write failed, so that a session's
// log line says what was sent, not what was meant.
func TestCloseSentIsWhatWasWritten(t *testing.T) {
	for _, broken := range []bool{false, true} {
		var dst net.Conn = &recordingConn{}
		if broken {
			dst = &failingConn{}
		}
		o := &testOwner{}
		var flow Flow
		p := New(o, NewPeer(&recordingConn{}, nil, Upstream), NewPeer(dst, nil, Client), &flow, Options{MaxMessage: 1 << 20})
		p.consume(AppendFrame(nil, OpClose, ClosePayload(4000, "bye"), false))
		want := int64(1000) // the test owner answers the other side 1000
		if broken {
			want = 0
		}
		if got := flow.CloseSent.Load(); got != want {
			t.Errorf("write failing %v: CloseSent %d, want %d", broken, got, want)
		}
	}
}

// TestNoErrorMidMessage: an Error message for a client that is inside a
// fragmented message would be a protocol error: then only the close goes.
func TestNoErrorMidMessage(t *testing.T) {
	for _, mid := range []bool{false, true} {
		client := &recordingConn{}
		o := &testOwner{}
		var flow Flow
		p := New(o, NewPeer(&recordingConn{}, nil, Upstream), NewPeer(client, nil, Client), &flow, Options{MaxMessage: 1 << 20})
		first := AppendFrame(nil, OpBinary, []byte("audio"), false)
		if mid {
			first[0] &^= 0x80 // FIN=0: more fragments to come
		}
		p.consume(first)
		o.End(Ending{Cause: Busy, Src: Client}) // the client is answered RELAY_BUSY
		client.out = client.out[:0]
		p.closeDst()
		hasError := bytes.Contains(client.out, []byte("RELAY_BUSY"))
		if hasError == mid {
			t.Errorf("mid-message %v: client was sent %q", mid, client.out)
		}
	}
}

// TestCloseAfterHalfWrittenFrame: the session ends while a frame to dst is
// half written; its close goes as soon as the frame is whole, not at the
// next frame from src, which may never come.
func TestCloseAfterHalfWrittenFrame(t *testing.T) {
	client := &recordingConn{}
	o := &testOwner{}
	var flow Flow
	p := New(o, NewPeer(&recordingConn{}, nil, Upstream), NewPeer(client, nil, Client), &flow, Options{MaxMessage: 1 << 20})
	frame := AppendFrame(nil, OpBinary, bytes.Repeat([]byte("a"), 1000), false)
	p.consume(frame[:300])
	o.End(Ending{Cause: Closed, Src: Client, Code: 4000})
	if !p.readAgain(os.ErrDeadlineExceeded) { // as Run is woken by End
		t.Fatal("the pipe stopped reading before the frame was whole")
	}
	p.consume(frame[300:])
	want := append(append([]byte{}, frame...), AppendFrame(nil, OpClose, ClosePayload(4000, ""), false)...)
	if !bytes.Equal(client.out, want) {
		t.Fatalf("client was sent %d bytes, want the frame then the close", len(client.out))
	}
}

// TestTextFilterLast: a filter that returns Last sees no more messages: the
// next text message, fragments and all, goes on as it came.
func TestTextFilterLast(t *testing.T) {
	client := &recordingConn{}
	o := &testOwner{}
	var flow Flow
	calls := 0
	last := func(msg []byte) Verdict { calls++; return Verdict{Out: []byte("tagged"), Last: true} }
	p := New(o, NewPeer(&recordingConn{}, nil, Upstream), NewPeer(client, nil, Client), &flow,
		Options{MaxMessage: 1 << 20, Text: last, Budget: &testBudget{limit: 1 << 20}})
	p.io.init(p)
	first := AppendFrame(nil, OpText, []byte(`{"type":"Settings"}`), false)
	second := AppendFrame(nil, OpText, []byte(`{"type":`), false)
	second[0] &^= 0x80 // not final
	rest := AppendFrame(nil, OpContinuation, []byte(`"KeepAlive"}`), false)
	p.consume(bytes.Join([][]byte{first, second, rest}, nil))
	want := bytes.Join([][]byte{AppendFrame(nil, OpText, []byte("tagged"), false), second, rest}, nil)
	if !bytes.Equal(client.out, want) || calls != 1 {
		t.Fatalf("%d filter calls, client sent %q; want 1 and %q", calls, client.out, want)
	}
}
