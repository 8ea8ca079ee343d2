package main

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"dgrelay/internal/message"
	"dgrelay/internal/wspipe"
)

// A call outlives its Deepgram connection: when Deepgram ends an agent
// session that the client has not ended, the relay dials Deepgram again,
// gives it the session's Settings with the conversation so far, and goes on
// relaying; the client's socket stays open (sessionmove.go does the move). This
// file decides when.
//
// Deepgram's facts (docs voice-agent-errors-warnings; DESIGN §3):
//   - MAXIMUM_SESSION_LENGTH_APPROACHING (a Warning, 5 min before the
//     2-hour limit) asks for a move; the relay makes it at a quiet moment.
//   - An Error is fatal and "the connection often closes shortly after".
//     Those whose documented remedy is to retry the connection are
//     Deepgram's own trouble and move the session: INTERNAL_SERVER_ERROR,
//     FAILED_TO_START_LISTENING and ASR_CONNECTION_CLOSED, and
//     MAXIMUM_SESSION_LENGTH_REACHED (continuing is the documented way
//     past the limit). Every other Error is about the client's own
//     messages (Settings, audio format, timeouts) or unknown, and ends the
//     session as Deepgram said.
//   - A connection that drops without a close frame, or closes with 1011
//     (internal error), 1012 (service restart) or 1001 (going away), is
//     moved too.

// transientErrors are Deepgram's Error codes that move a session instead of
// ending it.
var transientErrors = map[string]bool{
	"INTERNAL_SERVER_ERROR":          true,
	"FAILED_TO_START_LISTENING":      true,
	"ASR_CONNECTION_CLOSED":          true,
	"MAXIMUM_SESSION_LENGTH_REACHED": true,
}

// sessionLengthWarning is Deepgram's Warning five minutes before its limit.
const sessionLengthWarning = "MAXIMUM_SESSION_LENGTH_APPROACHING"

// Why a session moved: the label of dgrelay_upstream_moves_total.
const (
	moveLength  = "session_length" // the warning, at a quiet moment
	moveError   = "upstream_error" // a transient Error
	moveDropped = "dropped"        // gone without a close frame, or 1001/1011/1012
)

// Bounds of the moves.
const (
	// moveHoldBytes bounds the client messages held during a move: 3 s of
	// 16 kHz linear16 (2 s at 24 kHz). Past it whole messages are dropped,
	// and counted.
	moveHoldBytes = 96 << 10
)

// moveQuiet is how long Deepgram must have sent nothing, with no call pending
// and the user not speaking, for a move asked by the warning; moveForceAfter
// is how long after the warning a move waits for a quiet moment before it is
// made anyway (Deepgram ends the session five minutes after the warning).
// Variables so that tests can shorten them.
//
// maxMovesPerHour bounds one session's moves: past it, a connection that
// keeps failing ends the session (Deepgram's trouble should not cost a dial
// loop; a variable for the benchmark of many moves).
//
// moveSettle is how long a move the warning asked for relays the old
// connection after the client's messages are held, before it leaves it.
var (
	moveSettle      = 150 * time.Millisecond
	maxMovesPerHour = 6
	moveQuiet       = 1500 * time.Millisecond
	moveForceAfter  = 4 * time.Minute
)

// continuation is an agent session's state for moving it.
type continuation struct {
	record   *conversationRecord
	handover *wspipe.Handover
	// applied: Deepgram applied the session's Settings; only then is
	// there a conversation to carry.
	applied atomic.Bool
	// dueSince is when the warning came (Unix nanoseconds, 0: none);
	// woken is set once the watchdog has woken the pipe for it.
	dueSince atomic.Int64
	woken    atomic.Bool
	// epoch counts the moves begun: what the client sends is recorded
	// with the one it was sent in.
	epoch atomic.Int64
	// holding: a hold is under way, begun in move generation holdEpoch,
	// when the Handover had dropped holdTextDropped text messages.
	holding         bool
	holdEpoch       int
	holdTextDropped int64
	// reason is a move Deepgram's last text asked for (an Error), ""
	// when none; guarded by mu with the rest.
	mu             sync.Mutex
	reason         string
	userSpeaking   bool
	lastHeard      time.Time
	moveTimes      []time.Time // of the last hour's moves
	tagged         bool        // the client's pipe only: USAGE_TAG's first Settings done
	lastDownCount  int64       // the watchdog's: Deepgram's message count
	lastDownChange time.Time
}

// hold starts holding the client's messages for a move, unless a hold is
// under way (a move the warning asked for begins it early), and returns the
// move's generation and how many text messages the Handover had dropped
// before it.
func (c *continuation) hold() (epoch int, textDropped int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.holding {
		c.holding = true
		c.holdEpoch = int(c.epoch.Add(1))
		c.holdTextDropped = c.handover.TextDropped.Load()
		c.handover.Hold()
	}
	return c.holdEpoch, c.holdTextDropped
}

// released ends a hold: the move completed or failed, or the session ended.
func (c *continuation) released() {
	c.mu.Lock()
	c.holding = false
	c.mu.Unlock()
}

// newContinuation is the state for one agent session.
func newContinuation(historyBytes int) *continuation {
	return &continuation{record: newConversationRecord(historyBytes), handover: wspipe.NewHandover(moveHoldBytes)}
}

// followUpstream notes what one of Deepgram's text messages means for a move,
// and reports whether the client must not see it: a warning or an Error that
// a move answers. wakeReader makes the pipe reading Deepgram stop waiting
// (the session's wakeUpstreamReader): passed in, so that the continuation
// needs nothing of the session.
func (c *continuation) followUpstream(kind []byte, msg []byte, wakeReader func()) (swallow bool) {
	now := time.Now()
	c.mu.Lock()
	c.lastHeard = now
	c.mu.Unlock()
	switch string(kind) {
	case "SettingsApplied":
		c.applied.Store(true)
	case "History", "ConversationText":
		c.record.heard(string(kind), msg)
		c.speech(msg)
	case "PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated":
		c.record.acknowledged(string(kind))
	case "UserStartedSpeaking":
		c.setSpeaking(true)
	case "AgentThinking", "AgentStartedSpeaking":
		c.setSpeaking(false)
	case "Warning", "Error":
		var n struct{ Code string }
		if json.Unmarshal(msg, &n) != nil || !c.applied.Load() {
			return false
		}
		switch {
		case string(kind) == "Warning" && n.Code == sessionLengthWarning:
			// The relay answers it: the client's call goes on.
			c.dueSince.CompareAndSwap(0, now.UnixNano())
			return true
		case string(kind) == "Error" && transientErrors[n.Code]:
			c.mu.Lock()
			c.reason = moveError
			c.mu.Unlock()
			// The connection is done: the pipe reading it is woken now
			// rather than when Deepgram closes it.
			wakeReader()
			return true
		}
	}
	return false
}

// speech clears the user's speaking once Deepgram reports what they said.
func (c *continuation) speech(msg []byte) {
	var t struct{ Role string }
	if json.Unmarshal(msg, &t) == nil && t.Role == "user" {
		c.setSpeaking(false)
	}
}

func (c *continuation) setSpeaking(on bool) {
	c.mu.Lock()
	c.userSpeaking = on
	c.mu.Unlock()
}

// followClient records what one client text message, as it goes on to
// Deepgram, means for a move.
func (c *continuation) followClient(msg []byte) {
	kind := message.Type(msg)
	if kind == nil {
		// A type written with escapes (Deepgram decodes them), or given
		// twice: read as a parser reads it. One no parser agrees on
		// leaves the record unsure of what Deepgram applied.
		_, typ, err := message.Parse(msg)
		if err != nil {
			c.record.lose("a client message whose kind the relay could not read")
			return
		}
		kind = []byte(typ)
	}
	switch k := string(kind); k {
	case "Settings", "UpdatePrompt", "UpdateSpeak", "UpdateThink", "UpdateListen":
		c.record.sent(k, msg, int(c.epoch.Load()))
	}
}

// quietFor reports whether a move asked by the warning may be made now:
// Deepgram has sent nothing (its message count, downCount, unchanged) for
// moveQuiet, no client-side call waits for its answer (callPending: the
// answer would go to a connection that never asked) and the user is not
// speaking; or the warning is old enough that it must be made anyway.
func (c *continuation) quietFor(now time.Time, downCount int64, callPending bool) bool {
	due := c.dueSince.Load()
	if due == 0 || c.woken.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if downCount != c.lastDownCount || c.lastDownChange.IsZero() {
		c.lastDownCount, c.lastDownChange = downCount, now
	}
	if now.Sub(time.Unix(0, due)) >= moveForceAfter {
		return true
	}
	quietSince := c.lastDownChange
	if c.lastHeard.After(quietSince) {
		quietSince = c.lastHeard
	}
	return !callPending && !c.userSpeaking && now.Sub(quietSince) >= moveQuiet
}

// reasonFor is why the end of a Deepgram connection, as the pipe saw it,
// moves the session, or "" when it ends it.
func (c *continuation) reasonFor(e wspipe.Ending) string {
	c.mu.Lock()
	reason := c.reason
	c.mu.Unlock()
	switch {
	case !c.applied.Load():
		return ""
	case reason != "":
		return reason
	case c.woken.Load():
		return moveLength
	case e.Cause == wspipe.Vanished:
		return moveDropped
	case e.Cause == wspipe.Closed && (e.Code == 1001 || e.Code == 1011 || e.Code == 1012):
		return moveDropped
	}
	return ""
}

// allowMove reports whether one more move fits the session's hourly bound,
// and counts it.
func (c *continuation) allowMove(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	recent := c.moveTimes[:0]
	for _, t := range c.moveTimes {
		if now.Sub(t) < time.Hour {
			recent = append(recent, t)
		}
	}
	c.moveTimes = recent
	if len(recent) >= maxMovesPerHour {
		return false
	}
	c.moveTimes = append(c.moveTimes, now)
	return true
}

// moved resets what belonged to the connection left behind.
func (c *continuation) moved() {
	c.mu.Lock()
	c.reason, c.userSpeaking, c.lastDownChange = "", false, time.Time{}
	c.mu.Unlock()
	c.dueSince.Store(0)
	c.woken.Store(false)
}
