package fakedeepgram

import (
	"context"
	"encoding/json"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// session is one upstream connection, whichever API it speaks.
type session struct {
	s     *Server
	c     *websocket.Conn
	raw   net.Conn
	id    string
	opts  Options
	voice bool

	ctx    context.Context
	cancel context.CancelFunc
	// streams is every goroutine of the session: Fake.Stream, the agent's
	// speech, the timers.
	streams sync.WaitGroup
	start   time.Time
	// last is when the client last sent a message, as time since start.
	last atomic.Int64
	// endedBy is how the fake ended the session, when it did: set once,
	// by whichever of the reader and the timers closes first.
	endedBy atomic.Pointer[Closed]

	agentState
}

// begin sets up what every session needs; finish, deferred, undoes it.
func (ss *session) begin() {
	ss.ctx, ss.cancel = context.WithCancel(context.Background())
	ss.start = time.Now()
}

func (ss *session) finish() {
	ss.c.CloseNow()
	ss.cancel()
	ss.streams.Wait()
}

// touch notes a client message, for ClientTimeout. An atomic store, no
// timer reset: it runs for every audio message.
func (ss *session) touch() { ss.last.Store(int64(time.Since(ss.start))) }

// send writes v as a JSON text message. Writes take no deadline: closing
// the connection ends a stuck one.
func (ss *session) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return ss.c.Write(context.Background(), websocket.MessageText, b)
}

// closeWith ends the session with a close frame of the fake's own, once,
// after sending first (nil for none), and returns how it ended.
func (ss *session) closeWith(code websocket.StatusCode, reason string, first any) Closed {
	end := &Closed{Code: code, Reason: reason}
	if !ss.endedBy.CompareAndSwap(nil, end) {
		return *ss.endedBy.Load()
	}
	if first != nil {
		_ = ss.send(first)
	}
	_ = ss.c.Close(code, reason)
	return *end
}

// ended is how the session ended when its read failed: the fake's own
// close if it made one, else what the read saw.
func (ss *session) ended(err error) Closed {
	if end := ss.endedBy.Load(); end != nil {
		return *end
	}
	return closedBy(err)
}

// clientTimeout is Options.ClientTimeout with its default; 0 for none.
func (ss *session) clientTimeout() time.Duration {
	switch t := ss.opts.ClientTimeout; {
	case t < 0:
		return 0
	case t == 0:
		return DefaultClientTimeout
	default:
		return t
	}
}

// timers runs the session's clocks in one goroutine: idle is called once
// no client message came for clientTimeout; warn at warnAt and end at endAt
// (zero for never). idle and end end the session.
func (ss *session) timers(idle func(), warnAt time.Duration, warn func(), endAt time.Duration, end func()) {
	timeout := ss.clientTimeout()
	if timeout == 0 && endAt == 0 {
		return
	}
	ss.streams.Add(1)
	go func() {
		defer ss.streams.Done()
		idleC := chanAfter(timeout)
		warnC, endC := chanAfter(warnAt), chanAfter(endAt)
		for {
			select {
			case <-ss.ctx.Done():
				return
			case <-idleC:
				quiet := time.Since(ss.start) - time.Duration(ss.last.Load())
				if quiet >= timeout {
					idle()
					return
				}
				idleC = time.After(timeout - quiet)
			case <-warnC:
				warn()
			case <-endC:
				end()
				return
			}
		}
	}()
}

// chanAfter is time.After, or a channel that never fires for d <= 0.
func chanAfter(d time.Duration) <-chan time.Time {
	if d <= 0 {
		return nil
	}
	return time.After(d)
}
