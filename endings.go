package main

import (
	"encoding/json"

	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// answer is the close one side gets: a code (0: none, the side is gone), its
// reason and, for a client, the Error code of the in-band message it reads
// first (the React component hands only those to the app).
type answer struct {
	code      websocket.StatusCode
	reason    string
	errorCode string // "" for none: a client that broke the protocol or stopped reading would not read it
}

// ending is one way a session, or an upgraded request, ends: the cause its
// log line and dgrelay_sessions_total name, who ended it, and what each side
// is answered. Every close the relay decides comes from this table, and
// TestEndingsInREADME holds the README's answers table to it.
type ending struct {
	cause    string
	closedBy string
	client   answer
	upstream answer
}

// The endings of a running session.
var (
	endClientVanished   = ending{"vanished", "client", answer{}, answer{code: websocket.StatusGoingAway, reason: "client went away"}}
	endUpstreamVanished = ending{"vanished", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream went away", errorCode: "UPSTREAM_GONE"}, answer{}}

	endClientTooBig   = ending{"too_big", "client", answer{code: websocket.StatusMessageTooBig, reason: "message too big", errorCode: "MESSAGE_TOO_BIG"}, answer{code: websocket.StatusNormalClosure, reason: "client message too big"}}
	endUpstreamTooBig = ending{"too_big", "upstream", answer{code: websocket.StatusNormalClosure, reason: "upstream message too big"}, answer{code: websocket.StatusMessageTooBig, reason: "message too big"}}

	endClientProtocol   = ending{"protocol_error", "client", answer{code: websocket.StatusProtocolError, reason: "protocol error"}, answer{code: websocket.StatusNormalClosure, reason: "client protocol error"}}
	endUpstreamProtocol = ending{"protocol_error", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream protocol error", errorCode: "UPSTREAM_PROTOCOL_ERROR"}, answer{code: websocket.StatusProtocolError, reason: "protocol error"}}

	endClientBusy   = ending{"text_budget", "client", relayBusy, answer{code: websocket.StatusNormalClosure, reason: "client message refused: relay busy"}}
	endUpstreamBusy = ending{"text_budget", "upstream", relayBusy, answer{code: websocket.StatusNormalClosure, reason: "upstream message refused: relay busy"}}

	endClientSlowText   = ending{"text_timeout", "client", answer{code: websocket.StatusPolicyViolation, reason: "message not finished in time"}, answer{code: websocket.StatusNormalClosure, reason: "client message not finished in time"}}
	endUpstreamSlowText = ending{"text_timeout", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream stalled", errorCode: "UPSTREAM_STALLED"}, answer{code: websocket.StatusPolicyViolation, reason: "message not finished in time"}}

	endTextRate = ending{"text_rate", "client", answer{code: websocket.StatusPolicyViolation, reason: "too much text"}, answer{code: websocket.StatusNormalClosure, reason: "client sent too much text"}}

	endSettingsRefused = ending{"settings_refused", "relay", answer{code: websocket.StatusPolicyViolation, reason: "settings refused", errorCode: "SETTINGS_REFUSED"}, answer{code: websocket.StatusNormalClosure, reason: "settings refused"}}

	// The component treats idle_timeout and session_max_duration as
	// expected endings and stays quiet for them: hence their case.
	endIdle         = relayEnding("idle", websocket.StatusPolicyViolation, "idle timeout", "idle_timeout")
	endDuration     = relayEnding("duration", websocket.StatusPolicyViolation, "session time limit reached", "session_max_duration")
	endSlowClient   = relayEnding("slow_client", websocket.StatusPolicyViolation, "client not reading", "") // it would not read one
	endSlowUpstream = relayEnding("slow_upstream", websocket.StatusBadGateway, "upstream not reading", "UPSTREAM_STALLED")
	endQuota        = relayEnding("quota", 4429, "daily quota reached", "QUOTA_EXCEEDED")
	endDrain        = ending{"drain", "relay", answer{code: websocket.StatusServiceRestart, reason: "service restart", errorCode: "SERVICE_RESTART"}, answer{code: websocket.StatusNormalClosure, reason: "relay restarting"}}
)

var relayBusy = answer{code: websocket.StatusTryAgainLater, reason: "relay busy, try again", errorCode: "RELAY_BUSY"}

// The refusals of an upgraded request: the browser's WebSocket API shows
// close codes, not HTTP statuses. Deepgram is not dialled, or did not answer.
var (
	refuseTokenMissing = refusal("token_missing", 4401, "token missing", "TOKEN_MISSING")
	refuseTokenExpired = refusal("token_expired", 4401, "token expired", "TOKEN_EXPIRED")
	refuseTokenInvalid = refusal("token_invalid", 4401, "token invalid", "TOKEN_INVALID")
	refuseUserSessions = refusal("user_sessions", 4429, "too many sessions", "TOO_MANY_SESSIONS")
	refuseUserRate     = refusal("rate", 4429, "too many new sessions", "SESSION_RATE_LIMITED")
	refuseFull         = refusal("instance_full", websocket.StatusTryAgainLater, "relay full, try again", "INSTANCE_FULL")
	refuseQuota        = refusal("quota", 4429, "daily quota reached", "QUOTA_EXCEEDED")
	// Redis cannot answer and REDIS_FAILURE=refuse.
	refuseLimitsUnavailable = refusal("limits_unavailable", websocket.StatusTryAgainLater, "limits unavailable, try again", "LIMITS_UNAVAILABLE")

	refuseUpstreamAuth        = refusal("upstream_failed", websocket.StatusBadGateway, "upstream refused the relay's key", "UPSTREAM_AUTH")
	refuseUpstreamRejected    = refusal("upstream_failed", websocket.StatusBadGateway, "upstream refused the session", "UPSTREAM_REJECTED")
	refuseUpstreamUnavailable = refusal("upstream_failed", websocket.StatusBadGateway, "upstream unavailable", "UPSTREAM_UNAVAILABLE")
)

// endings lists the table, for the test that holds it to the README.
var endings = []ending{
	endClientVanished, endUpstreamVanished, endClientTooBig, endUpstreamTooBig,
	endClientProtocol, endUpstreamProtocol, endClientBusy, endUpstreamBusy,
	endClientSlowText, endUpstreamSlowText, endTextRate, endSettingsRefused,
	endIdle, endDuration, endSlowClient, endSlowUpstream, endQuota, endDrain,
	refuseTokenMissing, refuseTokenExpired, refuseTokenInvalid, refuseUserSessions, refuseUserRate, refuseFull,
	refuseQuota, refuseLimitsUnavailable,
	refuseUpstreamAuth, refuseUpstreamRejected, refuseUpstreamUnavailable,
}

// relayEnding is a session the relay ends on its own account: the client
// gets code and reason, Deepgram a normal close with the same reason.
func relayEnding(cause string, code websocket.StatusCode, reason, errorCode string) ending {
	return ending{cause, "relay", answer{code: code, reason: reason, errorCode: errorCode}, answer{code: websocket.StatusNormalClosure, reason: reason}}
}

func refusal(cause string, code websocket.StatusCode, reason, errorCode string) ending {
	return ending{cause, "relay", answer{code: code, reason: reason, errorCode: errorCode}, answer{}}
}

// pipeEnding is the table's entry for how a pipe ended its session (all but
// a close, which passes on, and a refusal, which is the policy's).
func pipeEnding(e wspipe.Ending) ending {
	client := e.Src == wspipe.Client
	pick := func(fromClient, fromUpstream ending) ending {
		if client {
			return fromClient
		}
		return fromUpstream
	}
	switch e.Cause {
	case wspipe.TooBig:
		return pick(endClientTooBig, endUpstreamTooBig)
	case wspipe.ProtocolError:
		return pick(endClientProtocol, endUpstreamProtocol)
	case wspipe.Busy:
		return pick(endClientBusy, endUpstreamBusy)
	}
	return pick(endClientVanished, endUpstreamVanished)
}

// outcome is how one session ended: its ending, with what the session adds
// to it (a peer's own close passed on, the words of an Error message).
type outcome struct {
	cause    string
	closedBy string
	client   closeFor
	upstream closeFor
}

// closeFor is what one side is sent.
type closeFor struct {
	code   websocket.StatusCode
	reason string
	error  []byte // the Error message before the close; nil for none
}

// outcome makes e the outcome of a session; description, where e's client
// answer has an Error code, is what the Error message says (the close's
// reason when empty: the same words in both).
func (e ending) outcome(description string) outcome {
	o := outcome{cause: e.cause, closedBy: e.closedBy,
		client:   closeFor{code: e.client.code, reason: e.client.reason},
		upstream: closeFor{code: e.upstream.code, reason: e.upstream.reason}}
	if e.client.errorCode != "" {
		if description == "" {
			description = e.client.reason
		}
		o.client.error = errorFrame(e.client.errorCode, description)
	}
	return o
}

// closedOutcome: src sent a close frame. A deliberate close is passed on as
// it came; 1005 (a close frame without a code) goes on as a close frame
// without a code, and src gets its own code back.
func closedOutcome(src wspipe.Side, code websocket.StatusCode, reason string) outcome {
	o := outcome{cause: "closed", closedBy: src.String(),
		client: closeFor{code: code, reason: reason}, upstream: closeFor{code: code, reason: reason}}
	// The side that sent the close gets its code back, without a reason.
	if src == wspipe.Client {
		o.client.reason = ""
	} else {
		o.upstream.reason = ""
	}
	return o
}

// errorFrame is the in-band Error message a client reads (the React
// component's onError) before its close.
func errorFrame(code, description string) []byte {
	b, _ := json.Marshal(struct {
		Type        string `json:"type"`
		Code        string `json:"code"`
		Description string `json:"description"`
	}{"Error", code, description})
	return b
}
