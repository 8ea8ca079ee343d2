package wspipe

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHangupWithLastBytes: a client sends a frame and ends its socket, with
// a FIN or an RST, so that the hangup reaches the relay's socket before the
// runtime's poller has collected the data's edge, and adds no edge of its
// own: the FIN in the frame's own segment while the pipe waits, or either
// one before the pipe has started. The pipe stops reading at the short read;
// the watch must still wake it, and every session end at once. (With
// testNoHangupWake set, the first session waits here.)
func TestHangupWithLastBytes(t *testing.T) {
	cases := []struct {
		name          string
		before, reset bool
	}{
		{"FIN with the frame, while the pipe waits", false, false},
		{"FIN before the pipe starts", true, false},
		{"RST before the pipe starts", true, true},
	}
	for _, tc := range cases {
		for i := range 100 {
			c, relayClient := loopbackPair(t)
			relayUp, dg := loopbackPair(t)
			end := func() {
				frame := AppendFrame(nil, OpBinary, make([]byte, 640), true)
				if !tc.reset {
					cork(t, c) // the FIN goes in the frame's segment
				}
				if _, err := c.Write(frame); err != nil {
					t.Fatal(err)
				}
				if tc.reset {
					_ = c.(*net.TCPConn).SetLinger(0)
				}
				c.Close()
				time.Sleep(time.Millisecond) // at the relay's socket
			}
			if tc.before {
				end()
			}
			s := startSession(NewPeer(relayClient, nil, Client), NewPeer(relayUp, nil, Upstream), Options{MaxMessage: 1 << 20})
			go answerClose(dg)
			if !tc.before {
				time.Sleep(time.Millisecond) // the pipes wait on their sockets
				end()
			}
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
				t.Fatalf("%s, session %d: the pipe did not see its client leave", tc.name, i)
			}
			if e := s.owner.result(); e.Src != Client || e.Cause != Vanished {
				t.Fatalf("%s, session %d ended %+v, want the client vanished", tc.name, i, e)
			}
			if got := s.up.Messages.Load(); got != 1 {
				t.Fatalf("%s, session %d: %d messages relayed, want the one sent before the end", tc.name, i, got)
			}
		}
	}
	hangupWatch.mu.Lock()
	defer hangupWatch.mu.Unlock()
	if hangupWatch.live != 0 || hangupWatch.ep != nil {
		t.Fatalf("%d sockets still watched after every session ended", hangupWatch.live)
	}
}

// TestHangupWatchStaleEvent: an event for a slot whose peer has left, and
// whose slot a new peer took, reaches no one; the new peer's own does.
func TestHangupWatchStaleEvent(t *testing.T) {
	a, b := loopbackPair(t)
	defer a.Close()
	defer b.Close()
	first, second := NewPeer(a, nil, Client), NewPeer(b, nil, Upstream)
	watch := func(p *Peer, c net.Conn) {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Control(func(fd uintptr) { hangupWatch.watch(p, int(fd)) }); err != nil || !p.hang.watched {
			t.Fatalf("not watched: %v", err)
		}
	}
	watch(first, a)
	old := unix.EpollEvent{Fd: int32(first.hang.slot), Pad: int32(hangupWatch.slots[first.hang.slot].gen)}
	hangupWatch.unwatch(first)
	watch(second, b) // takes the slot first left
	defer hangupWatch.unwatch(second)
	if second.hang.slot != first.hang.slot {
		t.Fatalf("slot %d not reused (%d)", second.hang.slot, first.hang.slot)
	}
	if p := hangupWatch.peerOf(old); p != nil {
		t.Fatal("a stale event reached the slot's new peer")
	}
	cur := unix.EpollEvent{Fd: int32(second.hang.slot), Pad: int32(hangupWatch.slots[second.hang.slot].gen)}
	if p := hangupWatch.peerOf(cur); p != second {
		t.Fatal("the slot's own event did not reach its peer")
	}
	if p := hangupWatch.peerOf(unix.EpollEvent{Fd: 1 << 30}); p != nil {
		t.Fatal("an event past the slots reached a peer")
	}
}

// answerClose plays a peer that reads frames until the relay's close, and
// then answers it by ending its socket.
func answerClose(c net.Conn) {
	defer c.Close()
	var in []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		in = append(in, buf[:n]...)
		for {
			var h Header
			k, err := ParseHeader(in, &h)
			if err != nil || k == 0 || int64(len(in)-k) < h.Length {
				break
			}
			if h.Opcode == OpClose {
				return
			}
			in = in[k+int(h.Length):]
		}
	}
}

// cork holds what is written to c until it is closed, so that the last
// bytes and the FIN go in one segment: their two wake-ups on the relay's
// socket always fall before the poller's next collection.
func cork(t *testing.T, c net.Conn) {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
}
