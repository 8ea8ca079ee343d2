package main

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// sessionSet is the relay's own record of live sessions. http.Server's
// Shutdown neither sees nor waits for hijacked connections, so the drain works
// from this set instead. It is touched at a session's start and end only,
// never per frame.
type sessionSet struct {
	mu sync.Mutex
	// handshakes counts requests between admission and their session's end:
	// a drain must wait for a session still dialling Deepgram too.
	handshakes int
	live       map[*session]struct{}
	// closed is set at the drain deadline: no session may start after it.
	closed bool
	// changed gets a token whenever a session ends, to wake the drain.
	changed chan struct{}
}

func (ss *sessionSet) init() {
	ss.live = make(map[*session]struct{})
	ss.changed = make(chan struct{}, 1)
}

// beginResult is begin's answer.
type beginResult int

const (
	admitted      beginResult = iota
	admitClosed               // the drain deadline passed
	admitFull                 // MAX_SESSIONS requests are in the relay already
	admitCapacity             // MAX_TOTAL_SESSIONS are, on this instance alone
)

// begin admits a request unless the set is closed or max requests are in
// the relay already, dialling or relaying, or total (0: no cap).
func (ss *sessionSet) begin(max, total int) beginResult {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch {
	case ss.closed:
		return admitClosed
	case ss.handshakes >= max:
		return admitFull
	case total > 0 && ss.handshakes >= total:
		return admitCapacity
	}
	ss.handshakes++
	return admitted
}

// done is begin's counterpart, when the handler returns.
func (ss *sessionSet) done() {
	ss.mu.Lock()
	ss.handshakes--
	ss.mu.Unlock()
	select {
	case ss.changed <- struct{}{}:
	default:
	}
}

// add records s as live; it is false once the set is closed.
func (ss *sessionSet) add(s *session) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return false
	}
	ss.live[s] = struct{}{}
	return true
}

func (ss *sessionSet) remove(s *session) {
	ss.mu.Lock()
	delete(ss.live, s)
	ss.mu.Unlock()
}

// active counts requests still in the relay, dialling or relaying.
func (ss *sessionSet) active() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.handshakes
}

// isClosed reports whether the drain deadline has passed.
func (ss *sessionSet) isClosed() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closed
}

// close stops new sessions and returns the live ones.
func (ss *sessionSet) close() []*session {
	ss.mu.Lock()
	ss.closed = true
	ss.mu.Unlock()
	return ss.snapshot()
}

// snapshot returns the live sessions.
func (ss *sessionSet) snapshot() []*session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return slices.Collect(maps.Keys(ss.live))
}

// waitIdle returns true once no request is left in the relay, or false if
// until fires first.
func (ss *sessionSet) waitIdle(until <-chan time.Time) bool {
	for ss.active() > 0 {
		select {
		case <-ss.changed:
		case <-until:
			return ss.active() == 0
		}
	}
	return true
}
