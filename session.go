package main

import (
	"context"
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
	tools *tools
	// facts are its request's, read once: the service, the address, the
	// trace, the user and the identity.
	*facts
	id          string
	dgRequestID string
	// notes are what the session notes for its log lines and its record
	// (sessionrecord.go): request ids, the summary, the transcript.
	notes     recordNotes
	dialTime  time.Duration // opening Deepgram's socket, retries included
	dialTries int
	started   time.Time
	client    *wspipe.Peer
	upstream  *wspipe.Peer
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
	// conversation is what Deepgram reported of the conversation
	// (activity.go): when someone last spoke, the calls pending.
	conversation conversation
	// strippedLines counts the policy's "stripped" log lines; textRate,
	// the identity's, bounds the client text it parses (policyFilter).
	strippedLines int
	textRate      *rate.Limiter

	// upReported and downReported are what the metrics have counted of up
	// and down; guarded by mu.
	upReported, downReported flowReported

	// cont carries an agent session to a new Deepgram connection when its
	// own ends (nil: UPSTREAM_RESUME=off, or not an agent session); redial
	// dials Deepgram for it as the session was dialled; moves counts the
	// moves, guarded by mu.
	cont   *continuation
	redial func(ctx context.Context) dialed
	moves  int

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

// newSessionID is a fresh session id: 16 hex digits, random.
func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// log is the logger for lines about s.
// From Deepgram's Welcome on, its lines carry the request_id.
func (s *session) log() *slog.Logger {
	if l := s.notes.logger.Load(); l != nil {
		return l
	}
	return s.tools.logFor(s.trace)
}

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
	// A move may change the upstream: read under the lock.
	peers := []*wspipe.Peer{s.client, s.upstream}
	s.mu.Unlock()
	if s.cont != nil {
		// A hold would keep Deepgram's close from it.
		s.cont.handover.Cancel()
	}
	for _, p := range peers {
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
	client, upstream := s.peers()
	_ = client.Conn.Close()
	_ = upstream.Conn.Close()
}

// peers are the session's two connections (a move changes the upstream).
func (s *session) peers() (client, upstream *wspipe.Peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client, s.upstream
}

// wakeUpstreamReader makes the pipe reading Deepgram stop waiting, as if the
// connection had ended: it then asks for a move.
func (s *session) wakeUpstreamReader() {
	s.mu.Lock()
	up := s.upstream
	s.mu.Unlock()
	_ = up.Conn.SetReadDeadline(time.Unix(1, 0))
}

// budget is the text budget as the pipe reading src sees it: its reserve,
// src's pool and s's identity's share.
func (s *session) budget(src wspipe.Side) wspipe.Budget {
	return &sessionBudget{texts: s.tools.texts, pool: s.tools.texts.pool(src), user: s.userText, ended: s.endedSignal()}
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

// timers is the watchdog's view of one session. Only the watchdog goroutine
// touches it.
type timers struct {
	lastUp, lastDown int64     // message counts at the last change
	lastChange       time.Time // when either count last moved
	upStuck          time.Time // when the client→upstream write was first seen stuck
	downStuck        time.Time
}

// flush adds what s relayed since the last flush to the byte and message
// counters. The watchdog calls it every tick and the handler once at the
// end, so the counters move while long sessions run and no frame touches a
// shared counter.
func (s *session) flush(m *metrics) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range [...]struct {
		f        *wspipe.Flow
		reported *flowReported
		counters directionCounters
	}{{&s.up, &s.upReported, m.up}, {&s.down, &s.downReported, m.down}} {
		msgs, bytes := d.f.Messages.Load(), d.f.Bytes.Load()
		if msgs == d.reported.messages && bytes == d.reported.bytes {
			continue // a quiet direction
		}
		// A Prometheus counter panics on a negative Add, which would end
		// the process and every call on it: a count that ever went back
		// is reported from where it is now, never subtracted.
		if n := msgs - d.reported.messages; n > 0 {
			d.counters.messages.Add(float64(n))
		}
		if n := bytes - d.reported.bytes; n > 0 {
			d.counters.bytes.Add(float64(n))
		}
		d.reported.messages, d.reported.bytes = msgs, bytes
	}
}

// flowReported is how much of a flow the counters have seen; guarded by the
// session's mutex.
type flowReported struct {
	messages, bytes int64
}

// settingsRefused ends a session whose message the policy refused: the client
// is told in band why, then closed 1008; Deepgram received nothing of that
// message and gets a normal close.
func (s *session) settingsRefused(why string) {
	s.tools.metrics.policyViolations.WithLabelValues("refuse").Inc()
	// why names the client's own keys: bounded and cleaned for the log
	// and the Error frame alike.
	why = s.tools.redact(why)
	s.log().Info("settings policy: refused", "session", s.id, "user", s.user, "why", why)
	s.end(endSettingsRefused.outcome(why))
}

// callPending reports whether a client-side function call Deepgram asked
// for has not been answered yet, as far as Deepgram has reported: History
// listing it with its response, or the agent's next words
// (conversation.historyMessage, conversationText). While one is, the agent
// waits for the client's FunctionCallResponse: the conversation idle timer
// is paused, and a session must not be moved to another Deepgram
// connection (the answer would go to a connection that never asked). Safe
// from any goroutine.
func (s *session) callPending() bool { return s.conversation.pending.Load() > 0 }

// lastSpoke is when s's conversation last moved: speech reported, or a
// pending call answered; the session's start before either.
func (s *session) lastSpoke() time.Time {
	if at := s.conversation.spoke.Load(); at != 0 {
		return time.Unix(0, at)
	}
	return s.started
}

// conversationIdle reports whether s is an agent session in which nobody
// has spoken for limit (0: off) at now, with no call pending. The watchdog
// asks it each tick.
func (s *session) conversationIdle(limit time.Duration, now time.Time) bool {
	// A pending client-side call pauses it for one period more at most:
	// an app whose function handler died must not keep the call open to
	// MAX_SESSION_DURATION.
	quiet := now.Sub(s.lastSpoke())
	return limit > 0 && s.service == "agent" && quiet >= limit && (!s.callPending() || quiet-limit >= limit)
}

// conversationIdleOutcome is the ending of a session in which nobody spoke
// for limit, saying so: the React component reads idle_timeout as an
// expected ending, the app the description.
func conversationIdleOutcome(limit time.Duration) outcome {
	return endConversationIdle.outcome(endConversationIdle.client.reason + " for " + limit.String() + " (CONVERSATION_IDLE_TIMEOUT)")
}
