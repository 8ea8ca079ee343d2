package main

import (
	"encoding/json"
	"slices"
	"sync/atomic"
	"time"
)

// Calls that nobody is in. Deepgram bills a Voice Agent connection by the
// minute, and an abandoned tab keeps one alive: the browser SDKs send
// KeepAlive every 10 s and a muted microphone still streams silence, so
// IDLE_TIMEOUT (any message) never fires. CONVERSATION_IDLE_TIMEOUT counts
// what Deepgram reports of the conversation instead: a session in which
// neither the user nor the agent has spoken for that long ends, whatever
// audio and KeepAlive flow. Speech, read from Deepgram's AsyncAPI spec
// (deepgram/deepgram-api-specs, asyncapi.yml, channel /v1/agent/converse):
//
//   - UserStartedSpeaking (AgentV1UserStartedSpeaking: type only);
//   - AgentStartedSpeaking (AgentV1AgentStartedSpeaking);
//   - ConversationText with role user or assistant (AgentV1ConversationText:
//     role required, enum user | assistant);
//   - History with role user or assistant (AgentV1History, its first form:
//     type, role, content). History is on by default (Settings
//     flags.history, default true).
//
// A client-side function call pauses the timer: the agent waits for the
// client's answer, and a slow lookup is not an empty call.

// maxPendingCalls bounds the calls a session remembers as pending: Deepgram
// asks for a few at a time (one FunctionCallRequest lists the calls of one
// turn). Calls past it are not remembered, so they do not pause the timer.
const maxPendingCalls = 32

// conversation is what an agent session knows of its conversation from
// Deepgram's messages: when someone last spoke, and which client-side
// function calls wait for their answer. Only the pipe from Deepgram writes
// it (through heard); the watchdog, and whatever else asks callPending,
// reads the atomics from other goroutines. Nothing of it is touched per
// audio frame.
type conversation struct {
	// spoke is when speech was last reported, or a pending call answered
	// (UnixNano); 0 until then: the session's start counts.
	spoke atomic.Int64
	// pending counts calls, the length of calls, published for readers
	// on other goroutines.
	pending atomic.Int32
	// calls are the ids of the client-side calls Deepgram asked for and
	// has not yet reported answered. Only the pipe from Deepgram touches
	// it.
	calls []string
}

// spokeNow records speech reported now.
func (c *conversation) spokeNow() { c.spoke.Store(time.Now().UnixNano()) }

// speaker is the one field ConversationText and History's first form carry
// that tells speech: role.
type speaker struct {
	Role string `json:"role"`
}

// spokeBy reports whether role is one the spec lists for speech.
func spokeBy(role string) bool { return role == "user" || role == "assistant" }

// conversationText notes a ConversationText: speech by the user or the agent.
// The agent's words end every pending call: Deepgram sends no confirmation
// of a FunctionCallResponse, and its docs say the call was processed when
// "the conversation proceeds and the agent replies" (docs
// voice-agent-function-call-response). With History off (Settings
// flags.history false) it is the only sign.
func (c *conversation) conversationText(msg []byte) {
	var m speaker
	if json.Unmarshal(msg, &m) != nil || !spokeBy(m.Role) {
		return
	}
	if m.Role == "assistant" {
		c.forget(func(string) bool { return true })
	}
	c.spokeNow()
}

// historyEntry is a History message in either of its forms (AsyncAPI spec,
// AgentV1History): a turn's words (role, content), or function calls with
// their responses (function_calls[]{id, name, client_side, arguments,
// response}, all required).
type historyEntry struct {
	Role          string `json:"role"`
	FunctionCalls []struct {
		ID       string  `json:"id"`
		Response *string `json:"response"`
	} `json:"function_calls"`
}

// historyMessage notes a History: speech, or calls answered. A call listed
// with its response has been answered and Deepgram has the answer, which is
// the signal a pending call waits for (the client's FunctionCallResponse
// goes unread without a policy, and reaching the relay is not reaching
// Deepgram).
func (c *conversation) historyMessage(msg []byte) {
	var h historyEntry
	if json.Unmarshal(msg, &h) != nil {
		return
	}
	if spokeBy(h.Role) {
		c.spokeNow()
	}
	for _, f := range h.FunctionCalls {
		if f.Response != nil {
			c.callDone(f.ID)
		}
	}
}

// callRequest is a FunctionCallRequest (AsyncAPI spec,
// AgentV1FunctionCallRequest: functions[]{id, name, arguments, client_side},
// all required). client_side false is a function Deepgram calls itself
// (one with an endpoint): the client has nothing to answer.
type callRequest struct {
	Functions []struct {
		ID         string `json:"id"`
		ClientSide bool   `json:"client_side"`
	} `json:"functions"`
}

// callRequested notes the client-side calls of a FunctionCallRequest as
// pending, each id once.
func (c *conversation) callRequested(msg []byte) {
	var r callRequest
	if json.Unmarshal(msg, &r) != nil {
		return
	}
	for _, f := range r.Functions {
		if f.ClientSide && f.ID != "" && len(c.calls) < maxPendingCalls && !slices.Contains(c.calls, f.ID) {
			c.calls = append(c.calls, f.ID)
		}
	}
	c.pending.Store(int32(len(c.calls)))
}

// callDone ends the pending call id, if it is one; the conversation moved
// then, and the timer counts from now.
func (c *conversation) callDone(id string) {
	c.forget(func(pending string) bool { return pending == id })
}

// forget ends the pending calls that done picks.
func (c *conversation) forget(done func(id string) bool) {
	n := len(c.calls)
	c.calls = slices.DeleteFunc(c.calls, done)
	if len(c.calls) != n {
		c.pending.Store(int32(len(c.calls)))
		c.spokeNow()
	}
}
