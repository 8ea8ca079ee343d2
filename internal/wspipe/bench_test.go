package wspipe

import (
	"io"
	"net"
	"strconv"
	"testing"
)

// pipePair is a session's two pipes between real loopback sockets: the
// benchmark writes client frames into in and reads them from out, both
// without allocating, so allocs/op is the pipe's own.
type pipePair struct {
	in, out net.Conn // the benchmark's ends: the browser and Deepgram
	s       *session
}

func newPipePair(b *testing.B, text TextFilter, ho *Handover) *pipePair {
	b.Helper()
	in, clientSide := loopbackPair(b)
	upstreamSide, out := loopbackPair(b)
	opt := Options{MaxMessage: 1 << 20, Text: text, Budget: &testBudget{limit: 64 << 20}, Handover: ho}
	return &pipePair{in: in, out: out, s: startSession(NewPeer(clientSide, nil, Client), NewPeer(upstreamSide, nil, Upstream), opt)}
}

func (p *pipePair) close() {
	p.in.Close()
	p.out.Close()
	<-p.s.done
}

// BenchmarkPipe relays one binary message per op from the client's socket to
// Deepgram's: the per-frame hot path, for -benchmem and -cpuprofile. The
// filter variants run the same audio with a text filter in force (as under a
// Settings policy): binary frames never reach it, so they cost the same.
// The handover variant is an agent session that may move to a new Deepgram
// connection (UPSTREAM_RESUME): a Handover in place, no move under way.
func BenchmarkPipe(b *testing.B) {
	filter := func(msg []byte) Verdict { return Verdict{Out: msg} }
	for _, size := range []int{640, 8192, 64 << 10} {
		for _, f := range []struct {
			name     string
			text     TextFilter
			handover bool
		}{{"filter=off", nil, false}, {"filter=on", filter, false}, {"filter=on,handover", filter, true}} {
			b.Run(strconv.Itoa(size)+"B/"+f.name, func(b *testing.B) {
				var ho *Handover
				if f.handover {
					ho = NewHandover(96 << 10)
				}
				benchmarkPipe(b, size, f.text, ho)
			})
		}
	}
}

func benchmarkPipe(b *testing.B, size int, text TextFilter, ho *Handover) {
	p := newPipePair(b, text, ho)
	defer p.close()
	frame := AppendFrame(nil, OpBinary, make([]byte, size), true)
	relay(b, p.in, p.out, frame)
}

// relay writes frame into in and reads it from out b.N times.
func relay(b *testing.B, in, out net.Conn, frame []byte) {
	got := make([]byte, len(frame))
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := in.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(out, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if string(got) != string(frame) {
		b.Fatal("the frame arrived changed")
	}
}

// BenchmarkPipeTLS relays one binary message per op from Deepgram over TLS to
// the client's socket: production's downstream path. The benchmark's TLS
// server end encrypts in the same process, so ns/op holds both ends' crypto.
func BenchmarkPipeTLS(b *testing.B) {
	for _, size := range []int{1920, 64 << 10} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			r := newTLSRig(b, selfSigned(b))
			r.capture.mu.Lock()
			r.capture.capture = false // Deepgram's records go straight to the socket
			r.capture.mu.Unlock()
			r.start()
			relay(b, r.server, r.out, AppendFrame(nil, OpBinary, make([]byte, size), false))
		})
	}
}
