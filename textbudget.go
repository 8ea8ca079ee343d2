package main

import (
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

// textBudget counts the bytes of text messages being read whole, as they
// arrive. Clients' messages and Deepgram's have a pool each, so that no
// number of clients holding messages unfinished can keep Deepgram's events
// (a Welcome, a reply) from other users; and no identity may take more than
// its share: the bytes of one whole message each way. A user who opens
// sessions and leaves a message in each unfinished holds one message's
// worth, not the instance's.
type textBudget struct {
	client, upstream textPool
	perUser          int64 // the sessions of one identity together
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
	b := &textBudget{perUser: 2 * maxMsg}
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

// give returns n bytes that take counted.
func (b *textBudget) give(pool *textPool, user *atomic.Int64, n int64) {
	user.Add(-n)
	pool.used.Add(-n)
}

// userBudget is the text budget as one pipe of a session sees it
// (wspipe.Budget): its source's pool and its identity's share.
type userBudget struct {
	texts *textBudget
	pool  *textPool
	user  *atomic.Int64
}

func (u userBudget) Take(n int64) bool { return u.texts.take(u.pool, u.user, n) }
func (u userBudget) Give(n int64)      { u.texts.give(u.pool, u.user, n) }
