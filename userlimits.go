package main

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

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
		if u.sessions == 0 && (u.limiter == nil || limiterFull(u.limiter, now)) && limiterFull(u.textRate, now) && u.usedOn(now) == 0 {
			delete(ul.users, id)
		}
	}
}

// limiterFull reports whether l has refilled: forgetting an identity before then
// would hand it a fresh budget.
func limiterFull(l *rate.Limiter, now time.Time) bool { return l.TokensAt(now) >= float64(l.Burst()) }

// allowMove takes one of identity's new-session rate for a move of one of
// its calls to a new Deepgram connection: to Deepgram a move is a new
// session, so a user's calls together move no faster than it may open
// them. It reports false when the rate is spent.
func (ul *userLimits) allowMove(identity string, now time.Time) bool {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	u := ul.users[identity]
	return u == nil || u.limiter == nil || u.limiter.AllowN(now, 1)
}
