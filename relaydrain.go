package main

import "time"

// shutdownTimeout bounds, after the drain, the wait for requests still
// in a handler; Cloud Run's SIGKILL comes 10 s after SIGTERM.
const shutdownTimeout = time.Second

// drainGrace is how long, after the drain deadline, peers get to answer
// the 1012 close before their connections are dropped: a round trip, with
// room for a slow one.
const drainGrace = 650 * time.Millisecond

// stopTail is the most the process takes past DRAIN_TIMEOUT to exit, whatever
// hangs: drainGrace for the closes to be answered, then what is left for
// requests still in a handler, webhook records still queued and the Redis
// calls of sessions' ends; past it they are left to end with the process (a
// lease lapses in Redis by its TTL, a record is dropped). Cloud Run kills 10
// s after SIGTERM: DRAIN_TIMEOUT's 8 s and this leave it 1.1 s, as
// TestDrainBudget measures with a Redis and a webhook that never answer.
const stopTail = 900 * time.Millisecond

// stopLogMargin is kept, before the process must be gone, for the webhook's
// close to count and log the records it drops.
const stopLogMargin = 100 * time.Millisecond

// shutdownBy is when, after the drain, the requests still in a handler and
// the queued webhook records must be done: shutdownTimeout from now, and
// stopLogMargin before stopBy at the latest.
func shutdownBy(stopBy time.Time) time.Time {
	t := time.Now().Add(shutdownTimeout)
	if limit := stopBy.Add(-stopLogMargin); t.After(limit) {
		t = limit
	}
	return t
}

// drain runs after the first shutdown signal. New upgrades get 503 from now
// on; live sessions go on until they end or timeout passes. Then each client
// gets 1012 (service restart) and its upstream a normal close; peers that do
// not answer within drainGrace are dropped. It returns as soon as no session
// is left.
func (rl *relay) drain(timeout time.Duration) {
	rl.draining.Store(true)
	rl.metrics.drains.Inc()
	rl.metrics.draining.Set(1)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	if rl.sessions.waitIdle(deadline.C) {
		rl.sessions.close()
		return
	}
	live := rl.sessions.close()
	rl.endDials()
	rl.log.Info("drain deadline: closing sessions", "sessions", len(live))
	for _, s := range live {
		go s.end(endDrain.outcome(""))
	}
	grace := time.NewTimer(drainGrace)
	defer grace.Stop()
	if rl.sessions.waitIdle(grace.C) {
		return
	}
	if n := rl.sessions.active(); n > 0 {
		rl.log.Warn("drain: dropping sessions that did not close in time", "sessions", n)
		for _, s := range live {
			s.kill()
		}
	}
}
