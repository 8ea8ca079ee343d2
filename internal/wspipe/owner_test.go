package wspipe

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testOwner is a session as small as a pipe needs: it keeps the first ending
// and answers each side with the close the relay's own rules would give.
type testOwner struct {
	mu       sync.Mutex
	ending   Ending
	ended    bool
	deadline time.Time
	closing  atomic.Bool
	peers    []*Peer // woken by End
}

func (o *testOwner) End(e Ending) {
	o.mu.Lock()
	if o.ended {
		o.mu.Unlock()
		return
	}
	o.ended, o.ending, o.deadline = true, e, time.Now().Add(time.Second)
	o.mu.Unlock()
	o.closing.Store(true)
	for _, p := range o.peers {
		_ = p.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

func (o *testOwner) Closing() bool { return o.closing.Load() }

func (o *testOwner) CloseDeadline() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.deadline
}

// CloseFor: the side that caused the ending gets its code (its own back for
// a close), the other side 1000 with the cause; a vanished side gets none.
func (o *testOwner) CloseFor(to Side) Close {
	e := o.result()
	if to != e.Src {
		return Close{Code: 1000, Reason: e.Src.String() + " ended"}
	}
	switch e.Cause {
	case Closed:
		return Close{Code: e.Code}
	case TooBig:
		return Close{Code: 1009, Reason: "message too big"}
	case ProtocolError:
		return Close{Code: 1002, Reason: "protocol error"}
	case Busy:
		return Close{Code: 1013, Reason: "busy", Error: []byte(`{"type":"Error","code":"RELAY_BUSY"}`)}
	case Refused:
		return Close{Code: 1008, Reason: "refused", Error: []byte(e.Why)}
	}
	return Close{}
}

func (o *testOwner) result() Ending {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ending
}

// testBudget is a text budget of limit bytes.
type testBudget struct {
	used  atomic.Int64
	limit int64
}

func (b *testBudget) Take(n int64) bool {
	if b.used.Add(n) > b.limit {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *testBudget) Give(n int64) { b.used.Add(-n) }

// recordingConn is a destination that keeps what a pipe writes to it.
type recordingConn struct {
	net.Conn // nil: only what a pipe calls is implemented
	mu       sync.Mutex
	out      []byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, p...)
	return len(p), nil
}
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }

// loopbackPair is two connected TCP sockets on 127.0.0.1.
func loopbackPair(tb testing.TB) (dialled, accepted net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	return d, a
}

// session runs both pipes between client and upstream, as the relay does,
// until both end; done is closed then.
type session struct {
	owner            *testOwner
	up, down         Flow
	client, upstream *Peer
	done             chan struct{}
}

func startSession(client, upstream *Peer, opt Options) *session {
	s := &session{owner: &testOwner{peers: []*Peer{client, upstream}}, client: client, upstream: upstream, done: make(chan struct{})}
	up := New(s.owner, client, upstream, &s.up, opt)
	down := New(s.owner, upstream, client, &s.down, opt)
	go func() {
		defer close(s.done)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			down.Run()
		}()
		up.Run()
		wg.Wait()
		client.Conn.Close()
		upstream.Conn.Close()
	}()
	return s
}
