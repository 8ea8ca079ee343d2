package main

import (
	"fmt"
	"sync"
	"time"
)

// An outage is known, not rediscovered per attempt. Without this, every
// session dialled Deepgram while it was down (twice with UPSTREAM_RETRIES=1:
// 30 attempts made 60 dials) and every client waited for its own dials to
// fail. After outageAfter failed tries in a row, sessions are refused at
// once with UPSTREAM_UNAVAILABLE for a hold that doubles from outageFirstHold
// to outageMaxHold; when it passes, one session dials as the probe (one try,
// no retries) while the others are still refused; its success ends the
// outage. Sessions are the probes, so an idle relay opens no Deepgram
// connection of its own, and the first session after Deepgram is back waits
// at most outageMaxHold.

const (
	// outageAfter is how many dial tries in a row must fail (a refused or
	// cut connection, no answer, or Deepgram's 502, 503 or 504) before
	// dials are held: one session's tries with UPSTREAM_RETRIES=1.
	outageAfter = 2
	// outageFirstHold is the first hold; each failed probe doubles it.
	outageFirstHold = 500 * time.Millisecond
	// outageMaxHold bounds the hold, and so how long after Deepgram is back
	// a session may still be refused.
	outageMaxHold = 4 * time.Second
)

// outage is one Deepgram service's state as its dials have found it. It is
// touched once per session start, never per frame.
type outage struct {
	service string
	mu      sync.Mutex
	// failures counts failed dial tries since the last success; failedBy
	// is the identity of the first of them, and others that another
	// identity failed too. One identity alone never holds everyone's
	// dials: its query (forwarded to Deepgram as it sent it) may be what
	// fails, and its own repeats are refusals.go's to answer.
	failures int
	failedBy string
	others   bool
	// probeFailedBy is the identity whose probe failed last: for one hold
	// more it does not probe, so that no one client can keep the hold
	// going by taking every probe with a query that fails.
	probeFailedBy string
	// down is set once failures reach outageAfter; since is when.
	down  bool
	since time.Time
	// hold is the current interval; no session dials before until.
	hold  time.Duration
	until time.Time
	// probing: a session is dialling as the probe.
	probing bool
	// refused counts sessions refused without a dial in this outage.
	refused int
}

// gate is a session's pass to dial: ok, or refused with the time until the
// next probe; probe marks the one session that tests Deepgram.
type gate struct {
	o     *outage
	ok    bool
	probe bool
	wait  time.Duration
	// identity is the session's, for the failures it reports.
	identity string
}

// gate says whether a session of identity may dial now.
func (o *outage) gate(now time.Time, identity string) gate {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case !o.down:
		return gate{o: o, ok: true, identity: identity}
	case o.probing || now.Before(o.until) || identity == o.probeFailedBy && now.Before(o.until.Add(o.hold)):
		// The identity whose probe failed last waits one hold more: any
		// other session probes first, and alone it still may.
		o.refused++
		return gate{o: o, wait: max(o.until.Sub(now), outageFirstHold)}
	}
	o.probing = true
	return gate{o: o, ok: true, probe: true, identity: identity}
}

// abandon gives a probe's turn back when its session did not dial (the
// client left, a limit refused it): the next session probes at once.
func (g gate) abandon() {
	if !g.probe {
		return
	}
	g.o.mu.Lock()
	g.o.probing = false
	g.o.mu.Unlock()
}

// outageChange is what a dial's result did to the state, for its log line.
type outageChange int

const (
	outageSame outageChange = iota
	outageBegan
	outageEnded
)

// report records a dial's result: tries failed tries and whether Deepgram
// answered in the end (answered: a 101, or any status but 502-504, which
// says it is up even when it refuses). A dial cut short by the client
// leaving says nothing and is abandon's.
func (g gate) report(answered bool, tries int, now time.Time) (change outageChange, downFor time.Duration, refused int) {
	o := g.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if g.probe {
		o.probing = false
	}
	if answered {
		o.failures, o.failedBy, o.others, o.probeFailedBy = 0, "", false, ""
		if !o.down {
			return outageSame, 0, 0
		}
		downFor, refused = now.Sub(o.since), o.refused
		o.down, o.hold, o.refused = false, 0, 0
		return outageEnded, downFor, refused
	}
	o.failures += tries
	switch {
	case o.failedBy == "":
		o.failedBy = g.identity
	case g.identity != o.failedBy:
		o.others = true
	}
	switch {
	case g.probe && o.down:
		o.hold = min(2*o.hold, outageMaxHold)
		o.until = now.Add(o.hold)
		o.probeFailedBy = g.identity
	case !o.down && o.failures >= outageAfter && o.others:
		o.down, o.since, o.hold = true, now, outageFirstHold
		o.until = now.Add(o.hold)
		return outageBegan, 0, 0
	}
	return outageSame, 0, 0
}

// isDown reports whether dials are held: a session's retry loop stops
// there rather than adding its tries to an outage already known.
func (o *outage) isDown() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.down
}

// wait is how long until the next probe may dial: a repeated refusal's
// Retry-After (at least outageFirstHold, the shortest hold).
func (o *outage) wait(now time.Time) time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return max(o.until.Sub(now), outageFirstHold)
}

// status is the /readyz detail line for the service.
func (o *outage) status(now time.Time) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down {
		return fmt.Sprintf("upstream %s: up\n", o.service)
	}
	next := "now"
	if o.probing {
		next = "probing"
	} else if wait := o.until.Sub(now); wait > 0 {
		next = "in " + wait.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("upstream %s: down for %s, %d failed dials, %d sessions refused without a dial, next probe %s\n",
		o.service, now.Sub(o.since).Round(time.Second), o.failures, o.refused, next)
}
