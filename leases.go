package main

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"dgrelay/internal/redislimits"
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

// relaying starts the session's clock: its time counts from now, and with a
// quota it may run for what its user had left at admission.
func (a *admission) relaying(s *session, now time.Time) {
	a.clock.Lock()
	defer a.clock.Unlock()
	a.session, a.since = s, now
	a.setDeadline(now, a.rl.quota-a.remaining)
}

// count adds the session's time since it was last counted to its user's day
// here and to its total; it returns the day's total here and the session's,
// or false once the session has ended (its lease is no longer renewed).
func (a *admission) count(now time.Time) (used, total time.Duration, held bool) {
	a.clock.Lock()
	defer a.clock.Unlock()
	if a.ended {
		return 0, 0, false
	}
	return a.advance(now), a.total, true
}

// finish counts the session's last time and ends its lease's renewals; it
// returns the session's total.
func (a *admission) finish(now time.Time) time.Duration {
	a.clock.Lock()
	defer a.clock.Unlock()
	a.advance(now)
	a.ended = true
	return a.total
}

// advance counts the session's time up to now, here; it returns the day's
// total here. a.clock is held.
func (a *admission) advance(now time.Time) time.Duration {
	if a.session == nil || a.rl.quota == 0 {
		return 0
	}
	d := now.Sub(a.since)
	a.since = now
	a.total += d
	return a.rl.users.spend(a.identity, d, now)
}

// counted settles a round: the deadline follows the day's time so far
// (Redis's when it answered, else this instance's).
func (a *admission) counted(now time.Time, used time.Duration) {
	a.clock.Lock()
	defer a.clock.Unlock()
	a.setDeadline(now, used)
}

// setDeadline sets when the session must end for its user's quota, given the
// day's time so far: what is left, as if this session alone spent it. A
// user's other sessions spend it too, which the next round sees, so a
// session runs at most one step past the quota and never ends before it.
// a.clock is held.
func (a *admission) setDeadline(now time.Time, used time.Duration) {
	if a.session == nil || a.rl.quota == 0 {
		return
	}
	at := now.Add(a.rl.quota - used).Sub(a.session.started)
	a.session.quotaAfter.Store(max(int64(at), 1)) // 0 is none
}

// renewLeases is one round: count, renew, set deadlines. The admissions stay
// locked across the Redis call, so a lease's end in Redis waits for the
// round (at most REDIS_TIMEOUT) rather than cross it; the session's end
// here does not.
func (rl *relay) renewLeases(now time.Time) {
	// Rounds never overlap: two would lock the admissions in different
	// orders, and each wait for the other.
	rl.leases.round.Lock()
	defer rl.leases.round.Unlock()
	all := rl.leases.snapshot()
	held := make([]*admission, 0, len(all))
	local := make([]time.Duration, 0, len(all))
	updates := make([]redislimits.Lease, 0, len(all))
	for _, a := range all {
		a.mu.Lock()
		used, total, live := a.count(now)
		if !live {
			a.mu.Unlock()
			continue
		}
		held, local = append(held, a), append(local, used)
		updates = append(updates, redislimits.Lease{Keys: a.keys, ID: a.id, Total: total.Milliseconds(), Base: a.acked})
	}
	shared := false
	if rl.shared != nil {
		shared = rl.shared.Renew(updates) == nil
	}
	for i, a := range held {
		if shared {
			a.acked = updates[i].Total
			a.counted(now, updates[i].Used)
		} else {
			a.counted(now, local[i])
		}
		a.mu.Unlock()
	}
}

// renewals runs a round every leaseRenewEvery until ctx ends.
func (rl *relay) renewals(ctx context.Context) {
	defer rl.background.Done()
	tick := time.NewTicker(rl.renewEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			rl.renewLeases(now)
		}
	}
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
