package main

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// userLimits caps what one identity (a token's sub, or the client address
// when unauthenticated) may hold and open: MAX_SESSIONS_PER_USER live
// sessions and SESSION_RATE_PER_MINUTE new ones. It is touched at a session's
// start and end, never per frame.
type userLimits struct {
	maxSessions int     // 0: no cap
	perMinute   float64 // 0: no rate limit
	mu          sync.Mutex
	users       map[string]*userState
}

type userState struct {
	sessions int
	limiter  *rate.Limiter // nil without a rate limit
	// text is what the identity's sessions hold of the text budget; the
	// pipes count it without the lock. The state outlives every session
	// that holds a pointer to it: forget drops only states with none.
	text atomic.Int64
}

func newUserLimits(maxSessions, perMinute int) *userLimits {
	return &userLimits{maxSessions: maxSessions, perMinute: float64(perMinute), users: make(map[string]*userState)}
}

// acquire admits one more session for identity and returns its state, or
// says which limit refused it ("rate" or "user_sessions").
func (ul *userLimits) acquire(identity string, now time.Time) (*userState, string) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	u := ul.users[identity]
	if u == nil {
		u = &userState{}
		if ul.perMinute > 0 {
			// The burst is a minute's worth, so a user may open them at
			// once but not more in any minute on average.
			u.limiter = rate.NewLimiter(rate.Limit(ul.perMinute/60), int(ul.perMinute))
		}
		ul.users[identity] = u
	}
	if ul.maxSessions > 0 && u.sessions >= ul.maxSessions {
		return nil, "user_sessions"
	}
	if u.limiter != nil && !u.limiter.AllowN(now, 1) {
		return nil, "rate"
	}
	u.sessions++
	return u, ""
}

// release is acquire's counterpart when the session ends.
func (ul *userLimits) release(identity string) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	if u := ul.users[identity]; u != nil {
		u.sessions--
	}
}

// forget drops identities that hold no session and whose rate budget has
// refilled, so the map does not grow with every user ever seen.
func (ul *userLimits) forget(now time.Time) {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	for id, u := range ul.users {
		if u.sessions == 0 && (u.limiter == nil || u.limiter.TokensAt(now) >= float64(u.limiter.Burst())) {
			delete(ul.users, id)
		}
	}
}
