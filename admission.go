package main

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"dgrelay/internal/redislimits"
)

// Admission: what a request must be given a place in before it is dialled,
// and gives back when its session ends. Two counts, both touched at a
// session's start and end, never per frame: the relay's live requests
// (MAX_SESSIONS, and what the drain waits for) and each identity's sessions
// and new-session rate.

// admissions are the places of the relay's requests: the live sessions
// (MAX_SESSIONS), each identity's limits here (users) and in Redis (shared,
// nil without REDIS_URL), the fleet's cap (maxTotal, MAX_TOTAL_SESSIONS:
// in Redis, and the instance's own count first), and the leases of this instance's admissions,
// renewed there every renewEvery (leaseRenewEvery; tests shorten it). quota
// is MAX_USER_SECONDS_PER_DAY.
type admissions struct {
	maxSessions int
	maxTotal    int
	sessions    sessionSet
	users       *userLimits
	shared      *redislimits.Limits
	leases      leaseSet
	redisAfter  redisAfter
	quota       time.Duration
	renewEvery  time.Duration
}

// admission is one request's place: taken by admit, given back by release,
// once, whichever way the request ends. It is also the session's lease and
// the clock of its time for the daily quota.
type admission struct {
	of       *admissions
	identity string
	key      string   // the identity hashed (identityKey): its name in Redis and at Deepgram
	id       string   // the lease's name in Redis: the session's id
	keys     []string // the lease's keys in Redis (LeaseKeys; nil without Redis)
	// remaining is the user's quota left when it was admitted.
	remaining time.Duration

	// mu is held across the lease's Redis calls, so that a renewal and the
	// end never cross (a renewal landing after the end would bring the
	// lease back); it guards acked.
	mu sync.Mutex
	// acked is the session's total (ms) that Redis last said it counted.
	acked int64
	// clock guards the session's time, for the quota, and ended: never
	// held across a Redis call, so neither a session's start nor its end
	// waits for a round.
	clock sync.Mutex
	ended bool
	// session is set when the session starts relaying: its time counts
	// from then, not while Deepgram is dialled.
	session *session
	since   time.Time     // when its time was last counted
	total   time.Duration // its time so far
}

// admit takes s's place, or says why not: draining (the drain deadline
// passed: an HTTP 503), or the ending that refuses it (a full instance, the
// user's limits, Redis unreachable under REDIS_FAILURE=refuse). It gives s
// its identity's text share.
func (as *admissions) admit(s *session) (a *admission, refused ending, draining bool) {
	switch as.sessions.begin(as.maxSessions, as.maxTotal) {
	case admitClosed:
		return nil, ending{}, true
	case admitFull:
		return nil, refuseFull, false
	case admitCapacity:
		// This instance alone holds the fleet's cap: Redis would refuse
		// too, and without Redis (or while it is away, under
		// REDIS_FAILURE=local) the cap is the instance's.
		return nil, refuseCapacity, false
	}
	a = &admission{of: as, identity: s.identity, key: s.identityKey, id: s.id}
	// The instance's own counters first, and they take the session: they
	// hold this instance's share of what Redis counts (never more), so
	// what they refuse Redis would refuse too. A user hammering the relay
	// past its limits then costs Redis nothing, and its requests at once
	// reach Redis only as many as its limits leave: they cannot queue
	// enough calls to time out, which would be an outage for every user
	// (LIMITS_UNAVAILABLE under REDIS_FAILURE=refuse).
	user, used, taken, refused := as.users.acquire(s.identity, s.started)
	if user == nil {
		as.sessions.done()
		return nil, refused, false
	}
	// Then Redis decides when it answers; when it cannot, the instance's
	// counters have (REDIS_FAILURE=local).
	if sl := as.shared; sl != nil {
		kind, sharedUsed, err := sl.Admit(a.key, a.id)
		refused := sharedRefusal(kind)
		if err != nil && sl.Refuses() {
			refused = refuseLimitsUnavailable
			if !errors.Is(err, redislimits.ErrDown) {
				// Redis may have run it and lost the answer: the
				// refused user would hold a lease and a rate token.
				keys, id := sl.LeaseKeys(a.key, a.id), a.id
				as.redisAfter.start(func() { _ = sl.End(keys, id, 0, 0, true) })
			}
		}
		if refused.cause != "" {
			as.users.giveBack(s.identity, taken, s.started)
			as.sessions.done()
			return nil, refused, false
		}
		if err == nil {
			used = sharedUsed
		}
		a.keys = sl.LeaseKeys(a.key, a.id)
	}
	a.remaining = as.quota - used
	as.leases.add(a)
	s.userText, s.textRate = &user.text, user.textRate
	return a, ending{}, false
}

// release gives the place back: the instance's and the user's here at
// once, then the lease in Redis, with the session's time, off the
// session's path. A Redis that hangs would otherwise hold each ending
// session's place (MAX_SESSIONS) for REDIS_TIMEOUT, and refuse new ones
// with INSTANCE_FULL. The counters here may count less than Redis for that
// moment, never more.
func (a *admission) release() {
	total := a.finish(time.Now())
	a.of.leases.remove(a)
	a.of.users.release(a.identity)
	a.of.sessions.done()
	if sl := a.of.shared; sl != nil {
		// Tried during an outage too: the end of a lease frees the user's
		// place at once rather than at its expiry, and carries its time.
		a.of.redisAfter.start(func() {
			// After a round that renews it, never before.
			a.mu.Lock()
			defer a.mu.Unlock()
			_ = sl.End(a.keys, a.id, total.Milliseconds(), a.acked, false)
		})
	}
}

// relaying starts the session's clock: its time counts from now, and with a
// quota it may run for what its user had left at admission.
func (a *admission) relaying(s *session, now time.Time) {
	a.clock.Lock()
	defer a.clock.Unlock()
	a.session, a.since = s, now
	a.setDeadline(now, a.of.quota-a.remaining)
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
	if a.session == nil || a.of.quota == 0 {
		return 0
	}
	d := now.Sub(a.since)
	a.since = now
	a.total += d
	return a.of.users.spend(a.identity, d, now)
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
	if a.session == nil || a.of.quota == 0 {
		return
	}
	at := now.Add(a.of.quota - used).Sub(a.session.started)
	a.session.quotaAfter.Store(max(int64(at), 1)) // 0 is none
}

// renew is one round: count, renew, set deadlines. The admissions stay
// locked across the Redis call, so a lease's end in Redis waits for the
// round (at most REDIS_TIMEOUT) rather than cross it; the session's end
// here does not.
func (as *admissions) renew(now time.Time) {
	// Rounds never overlap: two would lock the admissions in different
	// orders, and each wait for the other.
	as.leases.round.Lock()
	defer as.leases.round.Unlock()
	all := as.leases.snapshot()
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
	if as.shared != nil {
		shared = as.shared.Renew(updates) == nil
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

// renewals runs a round every renewEvery until ctx ends.
func (as *admissions) renewals(ctx context.Context) {
	tick := time.NewTicker(as.renewEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			as.renew(now)
		}
	}
}

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
