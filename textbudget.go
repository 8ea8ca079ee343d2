package main

import (
	"sync/atomic"
	"time"
)

// textBudgetBytes bounds what all sessions together hold of text messages
// read whole (the Settings policy's, the secret scrub's). Each may be up to
// MAX_MESSAGE_BYTES, and sessions that all stop halfway through one must not
// run the instance out of memory; the budget is at least four such messages.
const textBudgetBytes = 64 << 20

// textGatherTimeout is how long a text message the relay reads whole may
// take to arrive. A Settings or an event is a few kilobytes sent at once;
// one left unfinished holds its part of the budget, so it is not left
// unfinished for long. A variable so that tests can shorten it.
var textGatherTimeout = 10 * time.Second

// textBudget counts the bytes of text messages being read whole. One pool
// serves the instance, and no identity may take more than its share of it:
// the bytes of one whole message each way. A user who opens sessions and
// leaves a message in each unfinished holds one message's worth, not the
// instance's.
type textBudget struct {
	used    atomic.Int64
	limit   int64 // all sessions together
	perUser int64 // the sessions of one identity together
}

// newTextBudget sizes the budget for messages of up to maxMsg bytes
// (MAX_MESSAGE_BYTES, at most 1 GiB, so no product here overflows).
func newTextBudget(maxMsg int64) *textBudget {
	return &textBudget{limit: max(textBudgetBytes, 4*maxMsg), perUser: 2 * maxMsg}
}

// take counts n more bytes for the identity whose count is user, or reports
// false and counts nothing when they would pass its share or the pool.
func (b *textBudget) take(user *atomic.Int64, n int64) bool {
	if n < 0 || n > b.perUser {
		return false
	}
	// Each count stays below its bound plus n, both at most 2^31 or so:
	// the additions cannot overflow.
	if user.Add(n) > b.perUser {
		user.Add(-n)
		return false
	}
	if b.used.Add(n) > b.limit {
		b.used.Add(-n)
		user.Add(-n)
		return false
	}
	return true
}

// give returns n bytes that take counted.
func (b *textBudget) give(user *atomic.Int64, n int64) {
	user.Add(-n)
	b.used.Add(-n)
}

// userBudget is the text budget as one session's pipes see it
// (wspipe.Budget): its identity's share and the instance's pool.
type userBudget struct {
	texts *textBudget
	user  *atomic.Int64
}

func (u userBudget) Take(n int64) bool { return u.texts.take(u.user, n) }
func (u userBudget) Give(n int64)      { u.texts.give(u.user, n) }
