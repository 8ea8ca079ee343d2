package main

import (
	"sync"
	"sync/atomic"
	"time"

	"dgrelay/internal/wspipe"
)

// textBudgetBytes bounds what all sessions together hold of text messages
// read whole (the Settings policy's, the secret scrub's): clientTextBytes of
// clients' messages, the rest of Deepgram's. Each message may be up to
// MAX_MESSAGE_BYTES, and sessions that all stop halfway through one must not
// run the instance out of memory.
const (
	textBudgetBytes = 64 << 20
	clientTextBytes = 48 << 20
)

// textGatherTimeout is how long a text message the relay reads whole may
// take to arrive. A Settings or an event is a few kilobytes sent at once;
// one left unfinished holds its part of the budget, so it is not left
// unfinished for long. A variable so that tests can shorten it.
var textGatherTimeout = 10 * time.Second

// sessionTextReserve is what each session may hold of text messages read
// whole on each side without touching the shared pools: a typical Settings
// with a prompt, or a long event of Deepgram's, is a few kilobytes, so no
// number of others holding messages can fail an ordinary message. Its cost
// is counted in the memory plan: MAX_SESSIONS times two sides times this,
// 62.5 MiB at the default 1,000 sessions (28 MiB at the deploy files' 450),
// beside the 64 MiB of the pools.
const sessionTextReserve = 32 << 10

// textBudget counts the bytes of text messages being read whole, as they
// arrive. Each session has its own reserve on each side (sessionTextReserve,
// at most MAX_MESSAGE_BYTES); only the bytes of a message beyond it count
// against the shared pools. Clients' messages and Deepgram's have a pool
// each, so that no number of clients holding messages unfinished can keep
// Deepgram's events (a Welcome, a reply) from other users; and no identity
// may take more than its share of a pool: the bytes of one whole message
// each way. A user who opens sessions and leaves a message in each
// unfinished holds its reserves and one message's worth, not the
// instance's. A message that finds no room waits for some (see wait).
type textBudget struct {
	client, upstream textPool
	perUser          int64 // the sessions of one identity together
	reserve          int64 // each session's, on each side
	// reserved is what sessions hold within their reserves, for tests and
	// the memory plan.
	reserved atomic.Int64
	// waitFor bounds how long a message waits for room: most of its
	// gather time, so that it ends busy before the watchdog ends it late.
	// Nanoseconds, atomic: tests shorten it while sessions run.
	waitFor atomic.Int64
	// waiting counts the messages waiting for room; room is closed (and
	// made anew) when bytes come back while any waits.
	waiting atomic.Int32
	mu      sync.Mutex
	room    chan struct{}
}

// textPool is the bytes one side's messages hold across sessions.
type textPool struct {
	used  atomic.Int64
	limit int64
}

// newTextBudget sizes the budget for messages of up to maxMsg bytes
// (MAX_MESSAGE_BYTES, at most 1 GiB, so no product here overflows): each
// pool holds at least two such messages.
func newTextBudget(maxMsg int64) *textBudget {
	b := &textBudget{perUser: 2 * maxMsg, reserve: min(sessionTextReserve, maxMsg),
		room: make(chan struct{})}
	b.waitFor.Store(int64(textGatherTimeout * 9 / 10))
	b.client.limit = max(clientTextBytes, 2*maxMsg)
	b.upstream.limit = max(textBudgetBytes-clientTextBytes, 2*maxMsg)
	return b
}

// pool is the pool for messages from side.
func (b *textBudget) pool(side wspipe.Side) *textPool {
	if side == wspipe.Client {
		return &b.client
	}
	return &b.upstream
}

// take counts n more bytes from pool for the identity whose count is user,
// or reports false and counts nothing when they would pass its share or
// the pool.
func (b *textBudget) take(pool *textPool, user *atomic.Int64, n int64) bool {
	if n < 0 || n > b.perUser {
		return false
	}
	// Each count stays below its bound plus n, both at most 2^31 or so:
	// the additions cannot overflow.
	if user.Add(n) > b.perUser {
		user.Add(-n)
		return false
	}
	if pool.used.Add(n) > pool.limit {
		pool.used.Add(-n)
		user.Add(-n)
		return false
	}
	return true
}

// give returns n bytes that take counted, and wakes any message waiting for
// room.
func (b *textBudget) give(pool *textPool, user *atomic.Int64, n int64) {
	if n == 0 {
		return
	}
	user.Add(-n)
	pool.used.Add(-n)
	if b.waiting.Load() > 0 {
		b.mu.Lock()
		close(b.room)
		b.room = make(chan struct{})
		b.mu.Unlock()
	}
}

// roomSignal is the channel closed the next time bytes come back.
func (b *textBudget) roomSignal() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.room
}

// sessionBudget is the text budget as one pipe of a session sees it
// (wspipe.Budget): its reserve, its source's pool and its identity's
// share. Only its pipe calls it, one message at a time.
type sessionBudget struct {
	texts *textBudget
	pool  *textPool
	user  *atomic.Int64
	// ended is closed when the session ends: a message waiting for room
	// stops waiting.
	ended <-chan struct{}
	// inReserve and inPool are what the message being read holds of the
	// reserve and of the pool; since is when it began to hold any.
	inReserve, inPool int64
	since             time.Time
}

// Take counts n more bytes of the message being read: from the reserve
// while it lasts, then from the pool. Without room in the pool it waits
// (wait); false ends the session, busy.
func (u *sessionBudget) Take(n int64) bool {
	if n < 0 {
		return false
	}
	if u.inReserve == 0 && u.inPool == 0 {
		u.since = time.Now()
	}
	fromReserve := min(n, u.texts.reserve-u.inReserve)
	fromPool := n - fromReserve
	if fromPool > 0 && !u.texts.take(u.pool, u.user, fromPool) && !u.wait(fromPool) {
		return false
	}
	u.inReserve += fromReserve
	u.inPool += fromPool
	u.texts.reserved.Add(fromReserve)
	return true
}

// Give returns n bytes the message held: the pool's first.
func (u *sessionBudget) Give(n int64) {
	fromPool := min(n, u.inPool)
	u.inPool -= fromPool
	u.inReserve -= n - fromPool
	u.texts.reserved.Add(-(n - fromPool))
	u.texts.give(u.pool, u.user, fromPool)
}

// wait waits for n bytes of room in the pool and the identity's share, and
// takes them: until bytes come back and fit, the session ends, or the
// message has waited most of its gather time. Reading the message stops
// meanwhile, which holds its sender back.
func (u *sessionBudget) wait(n int64) bool {
	b := u.texts
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	timer := time.NewTimer(time.Until(u.since.Add(time.Duration(b.waitFor.Load()))))
	defer timer.Stop()
	for {
		// The signal is taken before the try, so that bytes given back
		// in between still wake this wait.
		room := b.roomSignal()
		if b.take(u.pool, u.user, n) {
			return true
		}
		select {
		case <-room:
		case <-timer.C:
			return false
		case <-u.ended:
			return false
		}
	}
}
