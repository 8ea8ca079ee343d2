package main

import (
	"sync"
)

// redisAfter runs the Redis calls a session's end hands off (its lease's
// end, the withdrawal of an admission whose answer never came), each
// bounded by REDIS_TIMEOUT, and lets the relay's close wait for them: none
// outlives the Redis client. Once closed, it starts none (the client is
// closed: a lease ended then lapses in Redis).
type redisAfter struct {
	mu      sync.Mutex
	closed  bool
	pending int
	wg      sync.WaitGroup
}

// start runs call on a goroutine of its own, unless the relay is closing:
// then the call is dropped (the lease it would end lapses in Redis).
func (ra *redisAfter) start(call func()) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.closed {
		return
	}
	ra.pending++
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		call()
		ra.mu.Lock()
		ra.pending--
		ra.mu.Unlock()
	}()
}

// busy reports whether a call is in flight.
func (ra *redisAfter) busy() bool {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return ra.pending > 0
}

// close starts no more calls and waits for those in flight.
func (ra *redisAfter) close() {
	ra.mu.Lock()
	ra.closed = true
	ra.mu.Unlock()
	ra.wg.Wait()
}
