package main

import (
	"maps"
	"slices"
	"sync"
)

// Leases and the daily quota. Every leaseRenewEvery one goroutine per
// instance counts each live session's time since the last round (into its
// user's day, here and in Redis), renews all the instance's leases in Redis
// in one pipeline, and sets each session's quota deadline from the answer,
// which the watchdog enforces. A goroutine or timer per session would cost
// more and buy nothing: the step is what bounds how far past a lapsed lease
// or a spent quota anything runs.

// leaseSet holds the admissions of this instance, from admission to release:
// a session still dialling Deepgram holds its place in Redis too.
type leaseSet struct {
	mu sync.Mutex
	m  map[*admission]struct{}
	// round is held by a renewal round.
	round sync.Mutex
}

func (ls *leaseSet) add(a *admission) {
	ls.mu.Lock()
	if ls.m == nil {
		ls.m = make(map[*admission]struct{})
	}
	ls.m[a] = struct{}{}
	ls.mu.Unlock()
}

func (ls *leaseSet) remove(a *admission) {
	ls.mu.Lock()
	delete(ls.m, a)
	ls.mu.Unlock()
}

func (ls *leaseSet) snapshot() []*admission {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return slices.Collect(maps.Keys(ls.m))
}

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

func (ra *redisAfter) run(call func()) {
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
