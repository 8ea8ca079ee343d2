package main

import (
	"context"
	"time"
)

// watchdog is the one goroutine that enforces every session's timers, so a
// session needs no timer of its own and a frame never touches one. Each tick
// it reads the sessions' counters: no message either way for IDLE_TIMEOUT
// is idle; an agent session in which nobody spoke for
// CONVERSATION_IDLE_TIMEOUT, no call pending, is a call nobody is in
// (activity.go); a write in progress that has not finished for WRITE_TIMEOUT is a
// peer that stopped reading; age over MAX_SESSION_DURATION is over time.
type watchdog struct {
	idle, write, maxAge time.Duration // 0: off (write is never 0)
	// conversationIdle is CONVERSATION_IDLE_TIMEOUT (0: off).
	conversationIdle time.Duration
	// text bounds a text message the relay reads whole (textGatherTimeout).
	text time.Duration
	tick time.Duration
}

func newWatchdog(idle, conversationIdle, write, maxAge, text, quotaStep time.Duration) watchdog {
	tick := time.Second
	for _, d := range []time.Duration{idle, conversationIdle, write, maxAge, text, quotaStep} {
		if d > 0 && d/4 < tick {
			tick = d / 4
		}
	}
	return watchdog{idle: idle, conversationIdle: conversationIdle, write: write, maxAge: maxAge, text: text, tick: max(tick, 5*time.Millisecond)}
}

// quotaStep is the lease renewal step when a quota is on (0 otherwise): the
// watchdog looks at the quota deadlines at least four times a step.
func quotaStep(quota, renewEvery time.Duration) time.Duration {
	if quota == 0 {
		return 0
	}
	return renewEvery
}

// check returns the outcome that ends s now, if any.
func (w watchdog) check(s *session, now time.Time) (outcome, bool) {
	t := &s.timers
	up, down := s.up.Messages.Load(), s.down.Messages.Load()
	upMoved, downMoved := up != t.lastUp, down != t.lastDown
	if t.lastChange.IsZero() || upMoved || downMoved {
		t.lastUp, t.lastDown, t.lastChange = up, down, now
	}
	if w.maxAge > 0 && now.Sub(s.started) >= w.maxAge {
		return endDuration.outcome(""), true
	}
	if q := s.quotaAfter.Load(); q != 0 && now.Sub(s.started) >= time.Duration(q) {
		return endQuota.outcome(""), true
	}
	// A text message left unfinished holds its share of the text budget.
	if since := s.up.Gathering.Load(); since != 0 && now.Sub(time.Unix(0, since)) >= w.text {
		return endClientSlowText.outcome(""), true
	}
	if since := s.down.Gathering.Load(); since != 0 && now.Sub(time.Unix(0, since)) >= w.text {
		return endUpstreamSlowText.outcome(""), true
	}
	// A write is stuck when it is in progress and its direction has not
	// finished a message since the last tick.
	if stalledFor(&t.downStuck, s.down.Writing.Load() && !downMoved, now) >= w.write {
		return endSlowClient.outcome(""), true
	}
	if stalledFor(&t.upStuck, s.up.Writing.Load() && !upMoved, now) >= w.write {
		return endSlowUpstream.outcome(""), true
	}
	if w.idle > 0 && now.Sub(t.lastChange) >= w.idle {
		return endIdle.outcome(""), true
	}
	if s.conversationIdle(w.conversationIdle, now) {
		return conversationIdleOutcome(w.conversationIdle), true
	}
	return outcome{}, false
}

// stalledFor tracks how long a condition has held, from the first tick it was
// seen; it returns 0 while it does not hold.
func stalledFor(since *time.Time, holds bool, now time.Time) time.Duration {
	if !holds {
		*since = time.Time{}
		return 0
	}
	if since.IsZero() {
		*since = now
	}
	return now.Sub(*since)
}

// watch enforces the timers of sessions until ctx ends, flushing their
// counts into m each tick, and now and then forgets users' idle identities.
func (w watchdog) watch(ctx context.Context, sessions *sessionSet, m *metrics, users *userLimits) {
	tick := time.NewTicker(w.tick)
	defer tick.Stop()
	lastForget := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, s := range sessions.snapshot() {
				s.flush(m)
				if s.Closing() {
					continue // closing already
				}
				if o, ok := w.check(s, now); ok {
					go s.end(o)
					continue
				}
				if s.cont != nil && s.cont.quietFor(now, s.down.Messages.Load(), s.callPending()) {
					// Deepgram asked for a move and the call is
					// quiet: the client's messages are held from
					// now, what Deepgram still says on the old
					// connection (its answer to what it heard
					// last) is relayed for moveSettle, and then the
					// pipe reading it is woken to make the move.
					s.cont.woken.Store(true)
					s.cont.hold()
					time.AfterFunc(moveSettle, s.wakeUpstreamReader)
				}
			}
			if now.Sub(lastForget) >= time.Minute {
				users.forget(now)
				lastForget = now
			}
		}
	}
}
