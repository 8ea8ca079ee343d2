package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

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
// is answered. Every close the relay decides comes from this table; each row
// is listed by the constructor that makes it (sessionEndings,
// refusalEndings), and TestEndingsInREADME holds docs/answers.md to them.
type ending struct {
	cause    string
	closedBy string
	client   answer
	upstream answer
}

// The endings of a session that was dialled: each counted in
// dgrelay_sessions_total by its cause, and listed there in this order.
var (
	// endClosed is a peer's close passed on to the other side
	// (closedOutcome): its answers are the peer's own, not the table's.
	endClosed = sessionEnding(ending{cause: "closed"})

	endClientVanished   = sessionEnding(ending{"vanished", "client", answer{}, answer{code: websocket.StatusGoingAway, reason: "client went away"}})
	endUpstreamVanished = sessionEnding(ending{"vanished", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream went away", errorCode: "UPSTREAM_GONE"}, answer{}})

	endClientTooBig   = sessionEnding(ending{"too_big", "client", answer{code: websocket.StatusMessageTooBig, reason: "message too big", errorCode: "MESSAGE_TOO_BIG"}, answer{code: websocket.StatusNormalClosure, reason: "client message too big"}})
	endUpstreamTooBig = sessionEnding(ending{"too_big", "upstream", answer{code: websocket.StatusNormalClosure, reason: "upstream message too big"}, answer{code: websocket.StatusMessageTooBig, reason: "message too big"}})

	endClientProtocol   = sessionEnding(ending{"protocol_error", "client", answer{code: websocket.StatusProtocolError, reason: "protocol error"}, answer{code: websocket.StatusNormalClosure, reason: "client protocol error"}})
	endUpstreamProtocol = sessionEnding(ending{"protocol_error", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream protocol error", errorCode: "UPSTREAM_PROTOCOL_ERROR"}, answer{code: websocket.StatusProtocolError, reason: "protocol error"}})

	endClientBusy   = sessionEnding(ending{"text_budget", "client", relayBusy, answer{code: websocket.StatusNormalClosure, reason: "client message refused: relay busy"}})
	endUpstreamBusy = sessionEnding(ending{"text_budget", "upstream", relayBusy, answer{code: websocket.StatusNormalClosure, reason: "upstream message refused: relay busy"}})

	// The component treats idle_timeout and session_max_duration as
	// expected endings and stays quiet for them: hence their case.
	endIdle     = relayEnding("idle", websocket.StatusPolicyViolation, "idle timeout", "idle_timeout")
	endDuration = relayEnding("duration", websocket.StatusPolicyViolation, "session time limit reached", "session_max_duration")
	// endConversationIdle is a call nobody is in: Deepgram reported no
	// speech for CONVERSATION_IDLE_TIMEOUT (activity.go). The idle code,
	// as the component expects it, and a description that says why.
	endConversationIdle = relayEnding("conversation_idle", websocket.StatusPolicyViolation, "nobody spoke", "idle_timeout")
	endQuota            = relayEnding("quota", 4429, "daily quota reached", "QUOTA_EXCEEDED")
	endSlowClient       = relayEnding("slow_client", websocket.StatusPolicyViolation, "client not reading", "") // it would not read one
	endSlowUpstream     = relayEnding("slow_upstream", websocket.StatusBadGateway, "upstream not reading", "UPSTREAM_STALLED")

	endClientSlowText   = sessionEnding(ending{"text_timeout", "client", answer{code: websocket.StatusPolicyViolation, reason: "message not finished in time"}, answer{code: websocket.StatusNormalClosure, reason: "client message not finished in time"}})
	endUpstreamSlowText = sessionEnding(ending{"text_timeout", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream stalled", errorCode: "UPSTREAM_STALLED"}, answer{code: websocket.StatusPolicyViolation, reason: "message not finished in time"}})

	endTextRate = sessionEnding(ending{"text_rate", "client", answer{code: websocket.StatusPolicyViolation, reason: "too much text"}, answer{code: websocket.StatusNormalClosure, reason: "client sent too much text"}})

	endDrain = sessionEnding(ending{"drain", "relay", answer{code: websocket.StatusServiceRestart, reason: "service restart", errorCode: "SERVICE_RESTART"}, answer{code: websocket.StatusNormalClosure, reason: "relay restarting"}})

	// Deepgram did not answer, or refused: the client is upgraded to hear
	// why (refuseUnreachable), and dgrelay_upstream_failures_total counts
	// the Error code.
	refuseUpstreamAuth        = dialFailure("upstream refused the relay's key", "UPSTREAM_AUTH")
	refuseUpstreamRejected    = dialFailure("upstream refused the session", "UPSTREAM_REJECTED")
	refuseUpstreamUnavailable = dialFailure("upstream unavailable", "UPSTREAM_UNAVAILABLE")

	// endClientGone is a client that left while Deepgram was being
	// dialled: its connection is dropped unanswered (clientGone), and it
	// is not an upstream failure.
	endClientGone = sessionEnding(ending{cause: "client_gone", closedBy: "client"})

	// endMoveFailed: Deepgram's connection ended and the relay could not
	// carry the call to a new one (sessionmove.go): UPSTREAM_GONE, as a drop
	// ends a session without continuation.
	endMoveFailed = sessionEnding(ending{"move_failed", "upstream", answer{code: websocket.StatusBadGateway, reason: "upstream went away", errorCode: "UPSTREAM_GONE"}, answer{code: websocket.StatusNormalClosure, reason: "moving the call failed"}})

	endSettingsRefused = sessionEnding(ending{"settings_refused", "relay", answer{code: websocket.StatusPolicyViolation, reason: "settings refused", errorCode: "SETTINGS_REFUSED"}, answer{code: websocket.StatusNormalClosure, reason: "settings refused"}})
)

// relayBusy is the client's answer when the text budget refuses a message,
// whichever side sent it.
var relayBusy = answer{code: websocket.StatusTryAgainLater, reason: "relay busy, try again", errorCode: "RELAY_BUSY"}

// The refusals of an upgraded request: the browser's WebSocket API shows
// close codes, not HTTP statuses. Deepgram is not dialled. Each is counted in
// dgrelay_refusals_total by its cause, a token's in
// dgrelay_auth_failures_total by the kind of failure instead.
var (
	refuseTokenMissing = refusalRow("token_missing", 4401, "token missing", "TOKEN_MISSING")
	refuseTokenExpired = refusalRow("token_expired", 4401, "token expired", "TOKEN_EXPIRED")
	refuseTokenInvalid = refusalRow("token_invalid", 4401, "token invalid", "TOKEN_INVALID")
	refuseUserSessions = refusalRow("user_sessions", 4429, "too many sessions", "TOO_MANY_SESSIONS")
	refuseUserRate     = refusalRow("rate", 4429, "too many new sessions", "SESSION_RATE_LIMITED")
	refuseFull         = refusalRow("instance_full", websocket.StatusTryAgainLater, "relay full, try again", "INSTANCE_FULL")
	// refuseCapacity is the fleet at MAX_TOTAL_SESSIONS (every instance
	// sharing the Redis; this one without it): unlike INSTANCE_FULL, a
	// retry at once on another instance meets the same cap, so the client
	// waits for a call to end somewhere.
	refuseCapacity = refusalRow("capacity", websocket.StatusTryAgainLater, "at capacity, try again later", "CAPACITY_REACHED")
	refuseQuota    = refusalRow("quota", 4429, "daily quota reached", "QUOTA_EXCEEDED")
	// Redis cannot answer and REDIS_FAILURE=refuse.
	refuseLimitsUnavailable = refusalRow("limits_unavailable", websocket.StatusTryAgainLater, "limits unavailable, try again", "LIMITS_UNAVAILABLE")
	// refuseUpstreamDown is a session held by a known outage, refused
	// without a dial: refuseUpstreamUnavailable's answer, under the label
	// upstream_down (relay.go refuses it so).
	refuseUpstreamDown = refusalRow("upstream_down", websocket.StatusBadGateway, "upstream unavailable", "UPSTREAM_UNAVAILABLE")
)

// sessionEndings and refusalEndings are the rows of the table, in the order
// written, each added by the constructor that made it: no list to keep by
// hand beside the rows.
var sessionEndings, refusalEndings []ending

// endingRows is every row of the table.
func endingRows() []ending {
	return slices.Concat(sessionEndings, refusalEndings)
}

// sessionEnding adds e to sessionEndings and returns it.
func sessionEnding(e ending) ending {
	sessionEndings = append(sessionEndings, e)
	return e
}

// relayEnding is a session the relay ends on its own account: the client
// gets code and reason, Deepgram a normal close with the same reason.
func relayEnding(cause string, code websocket.StatusCode, reason, errorCode string) ending {
	return sessionEnding(ending{cause, "relay", answer{code: code, reason: reason, errorCode: errorCode}, answer{code: websocket.StatusNormalClosure, reason: reason}})
}

// dialFailure is a session whose Deepgram dial failed: close 1014 to the
// client, after an Error message with errorCode.
func dialFailure(reason, errorCode string) ending {
	return sessionEnding(ending{"upstream_failed", "relay", answer{code: websocket.StatusBadGateway, reason: reason, errorCode: errorCode}, answer{}})
}

// refusalRow is an upgraded request refused before any dial, added to
// refusalEndings.
func refusalRow(cause string, code websocket.StatusCode, reason, errorCode string) ending {
	e := ending{cause, "relay", answer{code: code, reason: reason, errorCode: errorCode}, answer{}}
	refusalEndings = append(refusalEndings, e)
	return e
}

// sessionOutcomes are the causes dgrelay_sessions_total counts, from the
// rows, each once: its help lists them.
func sessionOutcomes() []string {
	var out []string
	for _, e := range sessionEndings {
		if !slices.Contains(out, e.cause) {
			out = append(out, e.cause)
		}
	}
	return out
}

// repeatLabels are the reasons dgrelay_refusals_repeated_total counts: a
// token's by the kind of failure, then the other in-band refusals' causes.
func repeatLabels() []string {
	out := []string{"token_<kind of failure>"}
	for _, e := range refusalEndings {
		if !strings.HasPrefix(e.cause, "token_") && !slices.Contains(out, e.cause) {
			out = append(out, e.cause)
		}
	}
	return out
}

// refusalLabels are the reasons dgrelay_refusals_total counts, from the
// rows: the answers before the upgrade that are counted, then the in-band
// refusals but a token's (those count in dgrelay_auth_failures_total).
func refusalLabels() []string {
	var out []string
	for _, h := range httpRefusals {
		if h.label != "" && !slices.Contains(out, h.label) {
			out = append(out, h.label)
		}
	}
	for _, e := range refusalEndings {
		if !strings.HasPrefix(e.cause, "token_") && !slices.Contains(out, e.cause) {
			out = append(out, e.cause)
		}
	}
	return out
}

// httpRefusal is an answer before the upgrade, for a request that never
// becomes a session: an HTTP status, with Retry-After or not. The browser's
// WebSocket API shows none of it (a failed handshake); Deepgram's SDKs back
// off from it. TestHTTPRefusalsInDocs holds docs/answers.md to these rows,
// TestHTTPRefusalsAnswered the relay's answers.
type httpRefusal struct {
	label      string // its refusal in logs and dgrelay_refusals_total; "" when neither
	when       string // the words that name it in the answers table of docs/answers.md
	status     int
	retryAfter bool
	header     map[string]string // sent with the status: what the client should offer instead
	// repeats are the close codes of the in-band refusals whose repeats,
	// within REFUSAL_WINDOW, get this status before the upgrade.
	repeats []websocket.StatusCode
}

// The answers before the upgrade.
var (
	httpBadRoute      = httpRow(httpRefusal{when: "unknown `service`", status: http.StatusBadRequest})
	httpBadHandshake  = httpRow(httpRefusal{when: "a WebSocket handshake `Accept` would refuse", status: http.StatusBadRequest, header: map[string]string{"Sec-WebSocket-Version": "13"}})
	httpNotWebSocket  = httpRow(httpRefusal{when: "plain HTTP (not an upgrade)", status: http.StatusUpgradeRequired, header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}})
	httpOrigin        = httpRow(httpRefusal{label: "origin", when: "`Origin` not allowed", status: http.StatusForbidden})
	httpNoBearer      = httpRow(httpRefusal{when: "subprotocols offered, but not `bearer`", status: http.StatusBadRequest})
	httpDraining      = httpRow(httpRefusal{label: "draining", when: "the relay is draining", status: http.StatusServiceUnavailable, retryAfter: true})
	httpHeadersTooBig = httpRow(httpRefusal{when: "handshake headers over 16 KiB", status: http.StatusRequestHeaderFieldsTooLarge})

	// A refusal told in band once, repeated for the same identity
	// (refusals.go): a token's, a user's limits, the instance or Deepgram.
	httpRepeatToken = httpRow(httpRefusal{when: "the same refusal again", status: http.StatusUnauthorized, retryAfter: true, repeats: []websocket.StatusCode{4401}})
	httpRepeatLimit = httpRow(httpRefusal{when: "the same refusal again", status: http.StatusTooManyRequests, retryAfter: true, repeats: []websocket.StatusCode{4429}})
	httpRepeatBusy  = httpRow(httpRefusal{when: "the same refusal again", status: http.StatusServiceUnavailable, retryAfter: true, repeats: []websocket.StatusCode{websocket.StatusTryAgainLater, websocket.StatusBadGateway}})
)

// httpRefusals are the answers before the upgrade, in the order written,
// each added by httpRow.
var httpRefusals []httpRefusal

// httpRow adds h to httpRefusals and returns it.
func httpRow(h httpRefusal) httpRefusal {
	httpRefusals = append(httpRefusals, h)
	return h
}

// repeatedAs is the row that answers a repeat of the in-band refusal e
// before the upgrade; ok is false for a close no refusal repeats.
func repeatedAs(e ending) (httpRefusal, bool) {
	for _, h := range httpRefusals {
		if slices.Contains(h.repeats, e.client.code) {
			return h, true
		}
	}
	return httpRefusal{}, false
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
	o := outcome{cause: endClosed.cause, closedBy: src.String(),
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
func errorFrame(code, description string) []byte { return notice("Error", code, description) }

// warningFrame is an in-band Warning: news the client may ignore.
func warningFrame(code, description string) []byte { return notice("Warning", code, description) }

// notice is an Error or Warning in Deepgram's shape (AsyncAPI spec,
// AgentV1Error and AgentV1Warning: type, code, description).
func notice(typ, code, description string) []byte {
	b, _ := json.Marshal(struct {
		Type        string `json:"type"`
		Code        string `json:"code"`
		Description string `json:"description"`
	}{typ, code, description})
	return b
}
