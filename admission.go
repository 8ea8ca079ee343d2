package main

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"dgrelay/internal/redislimits"

	"golang.org/x/time/rate"
)

// Admission: what a request must be given a place in before it is dialled,
// and gives back when its session ends. Two counts, both touched at a
// session's start and end, never per frame: the relay's live requests
// (MAX_SESSIONS, and what the drain waits for) and each identity's sessions
// and new-session rate.

// admission is one request's place: taken by admit, given back by release,
// once, whichever way the request ends. It is also the session's lease and
// the clock of its time for the daily quota (leases.go).
type admission struct {
	rl       *relay
	identity string
	user     string   // the identity hashed (userKey): its name in Redis and at Deepgram
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
func (rl *relay) admit(s *session) (a *admission, refused ending, draining bool) {
	switch rl.sessions.begin(rl.cfg.MaxSessions) {
	case admitClosed:
		return nil, ending{}, true
	case admitFull:
		return nil, refuseFull, false
	}
	a = &admission{rl: rl, identity: s.identity, user: s.userKey, id: s.id}
	// The instance's own counters first, and they take the session: they
	// hold this instance's share of what Redis counts (never more), so
	// what they refuse Redis would refuse too. A user hammering the relay
	// past its limits then costs Redis nothing, and its requests at once
	// reach Redis only as many as its limits leave: they cannot queue
	// enough calls to time out, which would be an outage for every user
	// (LIMITS_UNAVAILABLE under REDIS_FAILURE=refuse).
	user, used, taken, refused := rl.users.acquire(s.identity, s.started)
	if user == nil {
		rl.sessions.done()
		return nil, refused, false
	}
	// Then Redis decides when it answers; when it cannot, the instance's
	// counters have (REDIS_FAILURE=local).
	if sl := rl.shared; sl != nil {
		kind, sharedUsed, err := sl.Admit(a.user, a.id)
		refused := sharedRefusal(kind)
		if err != nil && sl.Refuses() {
			refused = refuseLimitsUnavailable
			if !errors.Is(err, redislimits.ErrDown) {
				// Redis may have run it and lost the answer: the
				// refused user would hold a lease and a rate token.
				keys, id := sl.LeaseKeys(a.user, a.id), a.id
				rl.redisAfter.run(func() { _ = sl.End(keys, id, 0, 0, true) })
			}
		}
		if refused.cause != "" {
			rl.users.giveBack(s.identity, taken, s.started)
			rl.sessions.done()
			return nil, refused, false
		}
		if err == nil {
			used = sharedUsed
		}
		a.keys = sl.LeaseKeys(a.user, a.id)
	}
	a.remaining = rl.quota - used
	rl.leases.add(a)
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
	a.rl.leases.remove(a)
	a.rl.users.release(a.identity)
	a.rl.sessions.done()
	if sl := a.rl.shared; sl != nil {
		// Tried during an outage too: the end of a lease frees the user's
		// place at once rather than at its expiry, and carries its time.
		a.rl.redisAfter.run(func() {
			// After a round that renews it, never before.
			a.mu.Lock()
			defer a.mu.Unlock()
			_ = sl.End(a.keys, a.id, total.Milliseconds(), a.acked, false)
		})
	}
}

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
	admitted    beginResult = iota
	admitClosed             // the drain deadline passed
	admitFull               // MAX_SESSIONS requests are in the relay already
)

// begin admits a request unless the set is closed or max requests are in
// the relay already, dialling or relaying.
func (ss *sessionSet) begin(max int) beginResult {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch {
	case ss.closed:
		return admitClosed
	case ss.handshakes >= max:
		return admitFull
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

// userLimits caps what one identity (a token's sub, or the client address
// when unauthenticated) may hold, open and spend on this instance:
// MAX_SESSIONS_PER_USER live sessions, SESSION_RATE_PER_MINUTE new ones and
// MAX_USER_SECONDS_PER_DAY of session time. With Redis they are what counts
// while Redis is away. It is touched at a session's start and end and once
// every lease renewal, never per frame.
type userLimits struct {
	maxSessions int           // 0: no cap
	perMinute   float64       // 0: no rate limit
	quota       time.Duration // 0: no daily quota
	textBurst   int
	mu          sync.Mutex
	users       map[string]*userState
}

type userState struct {
	sessions int
	limiter  *rate.Limiter // nil without a rate limit
	// day is the UTC day (days since 1970) that used counts.
	day  int64
	used time.Duration
	// text is what the identity's sessions hold of the text budget; the
	// pipes count it without the lock. The state outlives every session
	// that holds a pointer to it: forget drops only states with none.
	text atomic.Int64
	// textRate bounds the client text the identity's sessions send under
	// a policy, all of them together: parsing is the one cost per message
	// a client can make large, and new sessions bring no fresh burst.
	textRate *rate.Limiter
}

// newUserLimits caps maxSessions live sessions, perMinute new ones and quota
// of session time a day per identity; textBurst is the most client text its
// sessions may send at once under a policy (one whole message), before
// clientTextRate applies.
func newUserLimits(maxSessions, perMinute int, quota time.Duration, textBurst int64) *userLimits {
	return &userLimits{maxSessions: maxSessions, perMinute: float64(perMinute), quota: quota, textBurst: int(textBurst), users: make(map[string]*userState)}
}

// utcDay is the UTC day of t, in days since 1970.
func utcDay(t time.Time) int64 { return t.Unix() / 86400 }

// usedOn is the identity's session time on now's day.
func (u *userState) usedOn(now time.Time) time.Duration {
	if u.day != utcDay(now) {
		return 0
	}
	return u.used
}

// acquire admits one more session for identity and returns its state, the
// day's session time so far and the rate token it took (nil without a rate
// limit), for giveBack; or the ending of the limit that refused it.
func (ul *userLimits) acquire(identity string, now time.Time) (*userState, time.Duration, *rate.Reservation, ending) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	u := ul.users[identity]
	if u == nil {
		u = &userState{textRate: rate.NewLimiter(clientTextRate, ul.textBurst)}
		if ul.perMinute > 0 {
			// The burst is a minute's worth, so a user may open them at
			// once but not more in any minute on average.
			u.limiter = rate.NewLimiter(rate.Limit(ul.perMinute/60), int(ul.perMinute))
		}
		ul.users[identity] = u
	}
	used := u.usedOn(now)
	switch {
	case ul.quota > 0 && used >= ul.quota:
		return nil, 0, nil, refuseQuota
	case ul.maxSessions > 0 && u.sessions >= ul.maxSessions:
		return nil, 0, nil, refuseUserSessions
	}
	var taken *rate.Reservation
	if u.limiter != nil {
		if taken = u.limiter.ReserveN(now, 1); taken.DelayFrom(now) > 0 {
			taken.CancelAt(now)
			return nil, 0, nil, refuseUserRate
		}
	}
	u.sessions++
	return u, used, taken, ending{}
}

// giveBack undoes an acquire that Redis refused: the session was never
// opened, so it holds no place and spent no rate here.
func (ul *userLimits) giveBack(identity string, taken *rate.Reservation, now time.Time) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	if u := ul.users[identity]; u != nil {
		u.sessions--
	}
	if taken != nil {
		taken.CancelAt(now)
	}
}

// spend adds d of session time to identity's day (now's) and returns the
// day's total.
func (ul *userLimits) spend(identity string, d time.Duration, now time.Time) time.Duration {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	u := ul.users[identity]
	if u == nil {
		return 0
	}
	if day := utcDay(now); u.day != day {
		u.day, u.used = day, 0
	}
	u.used += d
	return u.used
}

// release is acquire's counterpart when the session ends.
func (ul *userLimits) release(identity string) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	if u := ul.users[identity]; u != nil {
		u.sessions--
	}
}

// forget drops identities that hold no session, whose rate budget has
// refilled and that spent no time today, so the map does not grow with
// every user ever seen (with a quota, it holds the day's users).
func (ul *userLimits) forget(now time.Time) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	for id, u := range ul.users {
		if u.sessions == 0 && (u.limiter == nil || full(u.limiter, now)) && full(u.textRate, now) && u.usedOn(now) == 0 {
			delete(ul.users, id)
		}
	}
}

// full reports whether l has refilled: forgetting an identity before then
// would hand it a fresh budget.
func full(l *rate.Limiter, now time.Time) bool { return l.TokensAt(now) >= float64(l.Burst()) }
