package main

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// closeTimeout bounds the close handshake once a session ends: the close
// frames are written and each side's answer awaited for at most this long.
// It is coder/websocket's Close bound (5 s to write, 5 s for the answer): a
// client that stopped reading and comes back within it still reads why its
// session ended.
const closeTimeout = 10 * time.Second

// session is one client and its Deepgram connection. It is the owner both of
// its pipes report to (wspipe.Owner).
type session struct {
	relay       *relay
	id          string
	service     string
	remote      string // client IP
	trace       string // the request's Cloud Trace name, for log lines; may be empty
	user        string // the token's sub; empty when unauthenticated
	identity    string // what the per-user limits count: sub or IP
	userKey     string // identity hashed: its name in Redis and in the usage tag
	usageTag    string // the tag naming the user at Deepgram (USAGE_TAG=user), else ""
	dgRequestID string
	dialTime    time.Duration // opening Deepgram's socket, retries included
	dialTries   int
	started     time.Time
	client      *wspipe.Peer
	upstream    *wspipe.Peer
	// closing is set, under mu, once end has run; the pipes read it
	// between frames without the lock. Beside the flows, which the pipes
	// write with every message, so that reading it costs no cache line
	// of its own.
	closing  atomic.Bool
	up, down wspipe.Flow // client→upstream, upstream→client
	// userText counts what the sessions of s's identity hold of the text
	// budget.
	userText *atomic.Int64
	timers   timers
	// strippedLines counts the policy's "stripped" log lines; textRate,
	// the identity's, bounds the client text it parses (policyFilter).
	strippedLines int
	textRate      *rate.Limiter

	// upReported and downReported are what the metrics have counted of up
	// and down; guarded by mu.
	upReported, downReported flowReported

	// quotaAfter is the session's age at which its user's daily quota is
	// spent (0: none), set every lease renewal; the watchdog enforces it.
	quotaAfter atomic.Int64

	mu      sync.Mutex // guards outcome, closeBy, endedCh and the reported counts
	outcome outcome
	closeBy time.Time
	// endedCh is closed when end runs, for what waits on the session
	// (a message waiting for text budget); made on first use.
	endedCh chan struct{}
}

func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// log is the relay's logger for lines about s.
func (s *session) log() *slog.Logger { return s.relay.logFor(s.trace) }

// end starts closing the session as o says, once; later calls do nothing. It
// does not wait: it wakes both pipes, each of which writes its destination's
// close and then waits, until the deadline, for its source's.
func (s *session) end(o outcome) {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return
	}
	s.outcome = o
	s.closeBy = time.Now().Add(closeTimeout)
	deadline := s.closeBy
	s.closing.Store(true)
	if s.endedCh != nil {
		close(s.endedCh)
	}
	s.mu.Unlock()
	for _, p := range []*wspipe.Peer{s.client, s.upstream} {
		// The write deadline bounds the closes and a write stuck on a
		// peer that stopped reading; the past read deadline wakes the
		// pipe waiting on p.
		_ = p.Conn.SetWriteDeadline(deadline)
		_ = p.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// End is how a pipe ends the session (wspipe.Owner).
func (s *session) End(e wspipe.Ending) {
	switch e.Cause {
	case wspipe.Closed:
		s.end(closedOutcome(e.Src, websocket.StatusCode(e.Code), e.Reason))
	case wspipe.Refused:
		s.settingsRefused(e.Why)
	default:
		s.end(pipeEnding(e).outcome(""))
	}
}

// Closing reports whether end has run (wspipe.Owner); the closes may still
// be under way.
func (s *session) Closing() bool { return s.closing.Load() }

// CloseDeadline is when the closing session stops waiting for its peers
// (wspipe.Owner).
func (s *session) CloseDeadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeBy
}

// CloseFor is the close for side to, as the outcome says (wspipe.Owner).
// Deepgram is never sent an Error message: it is the client's.
func (s *session) CloseFor(to wspipe.Side) wspipe.Close {
	o := s.result()
	if to == wspipe.Upstream {
		return wspipe.Close{Code: int(o.upstream.code), Reason: o.upstream.reason}
	}
	return wspipe.Close{Code: int(o.client.code), Reason: o.client.reason, Error: o.client.error}
}

// result is the outcome, for the log line once the session has stopped.
func (s *session) result() outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outcome
}

// kill drops both connections without close frames: the last step of a drain
// whose peers did not answer in time.
func (s *session) kill() {
	_ = s.client.Conn.Close()
	_ = s.upstream.Conn.Close()
}

// budget is the text budget as the pipe reading src sees it: its reserve,
// src's pool and s's identity's share.
func (s *session) budget(src wspipe.Side) wspipe.Budget {
	return &sessionBudget{texts: s.relay.texts, pool: s.relay.texts.pool(src), user: s.userText, ended: s.endedSignal()}
}

// endedSignal is a channel closed once end has run.
func (s *session) endedSignal() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endedCh == nil {
		s.endedCh = make(chan struct{})
		if s.closing.Load() {
			close(s.endedCh)
		}
	}
	return s.endedCh
}

// ended records a relayed session in the metrics and its log line.
func (s *session) ended() {
	o := s.result()
	m := s.relay.metrics
	m.flush(s)
	m.sessionsTotal.WithLabelValues(s.service, o.cause).Inc()
	m.sessionDuration.WithLabelValues(s.service).Observe(time.Since(s.started).Seconds())
	// The codes are those written: a close the relay meant to send but
	// could not (a peer gone, a write that timed out) counts as none.
	up, down := &s.up, &s.down
	clientClose, upstreamClose := websocket.StatusCode(down.CloseSent.Load()), websocket.StatusCode(up.CloseSent.Load())
	m.closeCodes.WithLabelValues("client", codeLabel(clientClose)).Inc()
	m.closeCodes.WithLabelValues("upstream", codeLabel(upstreamClose)).Inc()
	var tag []any
	if s.usageTag != "" {
		tag = []any{"usage_tag", s.usageTag}
	}
	s.log().Info("session end", append([]any{
		"session", s.id,
		"service", s.service,
		"duration_ms", time.Since(s.started).Milliseconds(),
		"up_messages", up.Messages.Load(), "up_bytes", up.Bytes.Load(),
		"down_messages", down.Messages.Load(), "down_bytes", down.Bytes.Load(),
		"closed_by", o.closedBy, "cause", o.cause,
		"client_close", int(clientClose), "upstream_close", int(upstreamClose),
		"dg_request_id", s.dgRequestID,
		"dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries,
		"user", s.user,
		"remote", s.remote}, tag...)...)
}
