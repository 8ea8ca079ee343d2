package main

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
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

// watchdog is the one goroutine that enforces every session's timers, so a
// session needs no timer of its own and a frame never touches one. Each tick
// it reads the sessions' counters: no message either way for IDLE_TIMEOUT
// is idle; a write in progress that has not finished for WRITE_TIMEOUT is a
// peer that stopped reading; age over MAX_SESSION_DURATION is over time.
type watchdog struct {
	idle, write, maxAge time.Duration // 0: off (write is never 0)
	// text bounds a text message the relay reads whole (textGatherTimeout).
	text time.Duration
	tick time.Duration
}

func newWatchdog(idle, write, maxAge, text time.Duration) watchdog {
	tick := time.Second
	for _, d := range []time.Duration{idle, write, maxAge, text} {
		if d > 0 && d/4 < tick {
			tick = d / 4
		}
	}
	return watchdog{idle: idle, write: write, maxAge: maxAge, text: text, tick: max(tick, 5*time.Millisecond)}
}

// timers is the watchdog's view of one session. Only the watchdog goroutine
// touches it.
type timers struct {
	lastUp, lastDown int64     // message counts at the last change
	lastChange       time.Time // when either count last moved
	upStuck          time.Time // when the client→upstream write was first seen stuck
	downStuck        time.Time
}

// check returns the outcome that ends s now, if any.
func (w watchdog) check(s *session, now time.Time) (outcome, bool) {
	t := &s.timers
	up, down := s.up.messages.Load(), s.down.messages.Load()
	upMoved, downMoved := up != t.lastUp, down != t.lastDown
	if t.lastChange.IsZero() || upMoved || downMoved {
		t.lastUp, t.lastDown, t.lastChange = up, down, now
	}
	if w.maxAge > 0 && now.Sub(s.started) >= w.maxAge {
		return policyOutcome("duration", websocket.StatusPolicyViolation, "session time limit reached"), true
	}
	// A text message left unfinished holds its share of the text budget.
	if since := s.up.gathering.Load(); since != 0 && now.Sub(time.Unix(0, since)) >= w.text {
		return slowTextOutcome(sideClient), true
	}
	if since := s.down.gathering.Load(); since != 0 && now.Sub(time.Unix(0, since)) >= w.text {
		return slowTextOutcome(sideUpstream), true
	}
	// A write is stuck when it is in progress and its direction has not
	// finished a message since the last tick.
	if stalled(&t.downStuck, s.down.writing.Load() && !downMoved, now) >= w.write {
		return policyOutcome("slow_client", websocket.StatusPolicyViolation, "client not reading"), true
	}
	if stalled(&t.upStuck, s.up.writing.Load() && !upMoved, now) >= w.write {
		return policyOutcome("slow_upstream", websocket.StatusBadGateway, "upstream not reading"), true
	}
	if w.idle > 0 && now.Sub(t.lastChange) >= w.idle {
		return policyOutcome("idle", websocket.StatusPolicyViolation, "idle timeout"), true
	}
	return outcome{}, false
}

// stalled tracks how long a condition has held, from the first tick it was
// seen; it returns 0 while it does not hold.
func stalled(since *time.Time, holds bool, now time.Time) time.Duration {
	if !holds {
		*since = time.Time{}
		return 0
	}
	if since.IsZero() {
		*since = now
	}
	return now.Sub(*since)
}

// policyOutcome is a session the relay ends: the client gets code and
// reason, Deepgram a normal close.
func policyOutcome(cause string, code websocket.StatusCode, reason string) outcome {
	return outcome{closedBy: "relay", cause: cause, clientCode: code, clientReason: reason,
		upstreamCode: websocket.StatusNormalClosure, upstreamReason: reason}
}
