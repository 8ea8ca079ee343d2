package main

import (
	"cmp"
	"context"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Answers to requests that do not become a session: an HTTP status before
// the upgrade, a close code after it (the browser's WebSocket API shows close
// codes, not HTTP statuses). Each comes from the endings table and leaves a
// "session refused" line, or the dial failure's own.

// closeWriteTimeout bounds writing the in-band Error frame to a client.
const closeWriteTimeout = 5 * time.Second

// refuse answers a request that does not become a session, as rf says:
// with its HTTP status when rf is answered before the upgrade; else in band
// the first time (refuseUpgraded: upgrade, Error frame, close, a log line),
// and with its row's HTTP status and Retry-After when rf.who met the same
// refusal within the window.
func (rl *relay) refuse(w http.ResponseWriter, r *http.Request, f *facts, rf *refusal) {
	switch {
	case rf.before != nil:
		rl.refuseBefore(w, f, rf)
	case rf.token != nil && rl.credentialFlood(rf):
		rl.refuseRepeated(w, rf.end, rf.label, rf.retryAfter)
	case rl.refused.repeat(rf.who, rf.label, time.Now()):
		rl.refuseRepeated(w, rf.end, rf.label, rf.retryAfter)
	default:
		rl.refuseUpgraded(w, r, f, rf)
	}
}

// credentialFlood reports whether rf, a token's refusal, brings a new
// credential from an address past credentialsPerAddress within the window,
// and logs the first such in a window.
func (rl *relay) credentialFlood(rf *refusal) bool {
	over, first := rl.credentialFloods.overflows(rf.address, rf.credential, time.Now())
	if first {
		rl.log.Info("refusals: more failing credentials from one address than told in band", "who", rf.address,
			"bound", credentialsPerAddress, "window_s", int(rl.cfg.RefusalWindow.Seconds()))
	}
	return over
}

// refuseBefore answers rf before the upgrade with its row's status, headers
// and body. A row with a label is counted, and logged unless rf.who met it
// within the window (beforeLogged; the minute's summary counts those).
func (rl *relay) refuseBefore(w http.ResponseWriter, f *facts, rf *refusal) {
	h := rf.before
	if h.label != "" {
		rl.metrics.refusals.WithLabelValues(h.label).Inc()
	}
	if h.label != "" && (rf.who == "" || !rl.beforeLogged.repeat(rf.who, h.label, time.Now())) {
		attrs := append(append([]any{"refusal", h.label}, rf.logged...), "status", h.status, "remote", f.remote)
		rl.logFor(f.trace).Info("session refused", attrs...)
	}
	for k, v := range h.header {
		w.Header().Set(k, v)
	}
	if h.retryAfter {
		w.Header().Set("Retry-After", "2")
	}
	http.Error(w, rf.detail, h.status)
	// Sent now, not when the handler returns: during the drain the process
	// may end as soon as this request gives its place back.
	_ = http.NewResponseController(w).Flush()
}

// refuseUpgraded accepts the upgrade only to close it as rf says: a refusal
// that must be a close code (a token, a user's limits, a full instance).
// Nothing is dialled upstream. A token's failure counts by its kind, any
// other refusal by its label.
func (rl *relay) refuseUpgraded(w http.ResponseWriter, r *http.Request, f *facts, rf *refusal) {
	if rf.token != nil {
		rl.metrics.authFailures.WithLabelValues(rf.token.label).Inc()
	} else {
		rl.metrics.refusals.WithLabelValues(rf.label).Inc()
	}
	rl.logFor(f.trace).Info("session refused", "refusal", rf.label, "close", int(rf.end.client.code), "user", f.user, "remote", f.remote)
	c, _, err := rl.accept(w, r)
	if err != nil {
		return
	}
	rl.closeWithError(c, rf.end.outcome(""))
}

// closeWithError writes o's Error message to a client the library still
// holds, then its close: the React component hands the app only the Error
// (onError), a close code only to the console.
func (rl *relay) closeWithError(c *websocket.Conn, o outcome) {
	if o.client.error != nil {
		ctx, cancel := context.WithTimeout(context.Background(), closeWriteTimeout)
		defer cancel()
		_ = c.Write(ctx, websocket.MessageText, o.client.error)
	}
	_ = c.Close(o.client.code, o.client.reason)
}

// refuseUnreachable tells a client that Deepgram could not be reached: first
// in band, which the React component shows, then close 1014 (bad gateway).
func (rl *relay) refuseUnreachable(client *websocket.Conn, s *session, f *upstreamFailure) {
	o := f.end.outcome(f.description)
	rl.closeWithError(client, o)
	rl.metrics.upstreamErrors.WithLabelValues(f.end.client.errorCode).Inc()
	rl.metrics.sessionsTotal.WithLabelValues(s.service, f.end.cause).Inc()
	rl.metrics.closeCodes.WithLabelValues("client", codeLabel(o.client.code)).Inc()
	s.log().Warn("upstream dial failed",
		"session", s.id, "service", s.service, "code", f.end.client.errorCode, "upstream_status", f.status,
		"dg_request_id", s.dgRequestID, "dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries, "remote", s.remote, "error", rl.redactError(f.cause))
}

// clientGone records a client that left while Deepgram was being dialled. It
// is not counted or logged as an upstream failure: clients opening and
// dropping connections must not look like a Deepgram outage.
func (rl *relay) clientGone(s *session) {
	rl.metrics.sessionsTotal.WithLabelValues(s.service, endClientGone.cause).Inc()
	rl.metrics.closeCodes.WithLabelValues("client", codeLabel(0)).Inc()
	s.log().Info("client left during the upstream dial",
		"session", s.id, "service", s.service, "cause", endClientGone.cause,
		"dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries, "remote", s.remote)
}

// dropUnanswered closes a request's connection without an answer.
func dropUnanswered(w http.ResponseWriter) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
	}
}

// summarizeRefusals logs the repeated refusals every period until ctx ends.
func (rl *relay) summarizeRefusals(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			rl.logRefusalSummary(now, every)
		}
	}
}

// logRefusalSummary writes one line per identity and reason repeated in the
// last period (refusalSummaryLines at most, the most repeated), then one
// line with the rest.
func (rl *relay) logRefusalSummary(now time.Time, period time.Duration) {
	repeated, evicted := rl.refused.take(now)
	logged, loggedEvicted := rl.beforeLogged.take(now)
	repeated, evicted = append(repeated, logged...), evicted+loggedEvicted
	slices.SortStableFunc(repeated, func(a, b refusalEntry) int { return cmp.Compare(b.repeats, a.repeats) })
	var restWho, restRepeats int
	for i, e := range repeated {
		if i >= refusalSummaryLines {
			restWho++
			restRepeats += e.repeats
			continue
		}
		rl.log.Info("refusals repeated", "who", e.who, "refusal", e.reason, "repeats", e.repeats, "period_s", int(period.Seconds()))
	}
	if restWho > 0 || evicted > 0 {
		rl.log.Info("refusals repeated, the rest", "who", restWho, "repeats", restRepeats, "forgotten", evicted, "period_s", int(period.Seconds()))
	}
}

// refuseRepeated answers a repeated refusal before the upgrade: e's HTTP
// status and Retry-After, counted, not logged (the summary does).
func (rl *relay) refuseRepeated(w http.ResponseWriter, e ending, label string, retryAfter time.Duration) {
	rl.metrics.refusalsRepeated.WithLabelValues(label).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(retryAfter, time.Second).Seconds()))))
	http.Error(w, e.client.reason+" (as before; retry later)", httpStatusOf(e))
}
