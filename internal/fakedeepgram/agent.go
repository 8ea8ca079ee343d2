package fakedeepgram

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/coder/websocket"
)

// AgentErrorClose is the close code the fake agent sends after a fatal Error.
// Deepgram publishes no close code for the agent (its AsyncAPI spec and docs
// name none; docs voice-agent-errors-warnings: after an Error "the
// connection often closes shortly after"), so this is the fake's choice: a
// normal closure, the reason being the Error's code.
const AgentErrorClose = websocket.StatusNormalClosure

// Error codes of the agent (docs: voice-agent-errors-warnings, "Error codes").
const (
	// ErrNonSettingsFirst: a message (text or audio) before Settings.
	ErrNonSettingsFirst = "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS"
	// ErrSettingsApplied: a second Settings.
	ErrSettingsApplied = "SETTINGS_ALREADY_APPLIED"
	// ErrInvalidSettings: a Settings without audio or agent, or of the
	// wrong shape.
	ErrInvalidSettings = "INVALID_SETTINGS"
	// ErrUnparsable: not JSON, no string type, an unknown type, or a
	// required field missing.
	ErrUnparsable = "UNPARSABLE_CLIENT_MESSAGE"
	// ErrClientTimeout: no client message for Options.ClientTimeout.
	ErrClientTimeout = "CLIENT_MESSAGE_TIMEOUT"
	// ErrSessionLength: the session reached Options.MaxSession.
	ErrSessionLength = "MAXIMUM_SESSION_LENGTH_REACHED"
	// WarnSessionLength: Options.SessionWarning before the end (a Warning).
	WarnSessionLength = "MAXIMUM_SESSION_LENGTH_APPROACHING"
	// WarnForceEndTurnUnsup: ForceEndTurn without a Flux listen provider
	// (a Warning; docs voice-agent-force-end-turn).
	WarnForceEndTurnUnsup = "FORCE_END_TURN_UNSUPPORTED"
)

// welcome is the agent's first message (AsyncAPI spec, AgentV1Welcome).
type welcome struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
}

// notice is an Error or a Warning (AsyncAPI spec, AgentV1Error and
// AgentV1Warning: type, description and code, all required).
type notice struct {
	Type        string `json:"type"`
	Description string `json:"description"`
	Code        string `json:"code"`
}

// typed is a message with only its type (SettingsApplied, the Update acks,
// AgentAudioDone).
type typed struct {
	Type string `json:"type"`
}

// agent runs a strict /v1/agent/converse session (AsyncAPI spec, channel
// /v1/agent/converse) and returns how it ended.
func (ss *session) agent() Closed {
	ss.begin()
	defer ss.finish()
	c, opts := ss.c, ss.opts
	ss.history = true
	if !opts.NoWelcome {
		if err := ss.send(welcome{Type: "Welcome", RequestID: ss.id}); err != nil {
			return closedBy(err)
		}
	}
	maxSession, warning := opts.MaxSession, opts.SessionWarning
	if maxSession == 0 {
		maxSession = DefaultMaxSession
	}
	if warning == 0 {
		warning = DefaultSessionWarning
	}
	warnAt := maxSession - warning
	if maxSession < 0 || warning < 0 || warnAt <= 0 {
		warnAt = 0
	}
	if maxSession < 0 {
		maxSession = 0
	}
	ss.timers(func() {
		ss.fatal(ErrClientTimeout, "We did not receive audio or any other message from the client within the timeout.")
	}, warnAt, func() {
		_ = ss.send(notice{Type: "Warning", Code: WarnSessionLength, Description: "The session will soon reach its maximum length."})
	}, maxSession, func() {
		ss.fatal(ErrSessionLength, "The session reached its maximum length.")
	})

	// Read as the benchmark's voice loop reads: no allocation and no timer
	// per audio message (see lenientVoice).
	discard := make([]byte, 4096)
	lis := &listener{s: ss.s}
	for {
		typ, r, err := c.Reader(context.Background())
		if err != nil {
			return ss.ended(err)
		}
		ss.touch()
		if typ == websocket.MessageBinary {
			if !ss.applied {
				if _, err := io.CopyBuffer(io.Discard, r, discard); err != nil {
					return ss.ended(err)
				}
				return ss.fatal(ErrNonSettingsFirst, "Binary audio arrived before Settings.")
			}
			if opts.EchoAudio {
				data, err := io.ReadAll(r)
				if err == nil {
					err = c.Write(context.Background(), websocket.MessageBinary, data)
				}
				if err != nil {
					return ss.ended(err)
				}
				continue
			}
			if err := lis.hear(r, discard); err != nil {
				return ss.ended(err)
			}
			continue
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return ss.ended(err)
		}
		ss.s.record(data)
		if end, ok := ss.control(data); ok {
			if end != nil {
				return *end
			}
			continue
		}
		if end := ss.agentText(data); end != nil {
			return *end
		}
	}
}

// fatal sends an Error and closes with AgentErrorClose (docs:
// voice-agent-errors-warnings: an Error is fatal).
func (ss *session) fatal(code, description string) Closed {
	return ss.closeWith(AgentErrorClose, code, notice{Type: "Error", Code: code, Description: description})
}

// agentText answers one client text message; a non-nil result ends the
// session.
func (ss *session) agentText(data []byte) *Closed {
	var msg map[string]json.RawMessage
	var typ string
	if json.Unmarshal(data, &msg) != nil || json.Unmarshal(msg["type"], &typ) != nil {
		end := ss.fatal(ErrUnparsable, "The message is not a JSON object with a string type.")
		return &end
	}
	// docs voice-agent-errors-warnings: nothing but Settings before
	// Settings, and one Settings only.
	if !ss.applied && typ != "Settings" {
		end := ss.fatal(ErrNonSettingsFirst, "A "+typ+" message arrived before Settings.")
		return &end
	}
	var err error
	unparsable := func(why string) *Closed {
		end := ss.fatal(ErrUnparsable, why)
		return &end
	}
	switch typ {
	case "Settings":
		if ss.applied {
			end := ss.fatal(ErrSettingsApplied, "Settings were already applied.")
			return &end
		}
		if why := checkSettings(msg); why != "" {
			end := ss.fatal(ErrInvalidSettings, why)
			return &end
		}
		ss.learnSettings(msg)
		ss.applied = true
		err = ss.send(typed{Type: "SettingsApplied"})
		if err == nil && ss.voice {
			ss.startSpeaking()
		}
	// AsyncAPI spec: each Update has one required field, acknowledged by
	// its own message.
	case "UpdatePrompt":
		if !isJSON(msg["prompt"], '"') {
			return unparsable("UpdatePrompt needs a string prompt.")
		}
		err = ss.send(typed{Type: "PromptUpdated"})
	case "UpdateSpeak":
		if !objectOrArray(msg["speak"]) {
			return unparsable("UpdateSpeak needs a speak object or array.")
		}
		err = ss.send(typed{Type: "SpeakUpdated"})
	case "UpdateThink":
		if !objectOrArray(msg["think"]) {
			return unparsable("UpdateThink needs a think object or array.")
		}
		// DESIGN §3: UpdateThink replaces the whole think block.
		ss.functions = functionsOf(msg["think"])
		err = ss.send(typed{Type: "ThinkUpdated"})
	case "UpdateListen":
		if !isJSON(msg["listen"], '{') {
			return unparsable("UpdateListen needs a listen object.")
		}
		err = ss.send(typed{Type: "ListenUpdated"})
	case "KeepAlive":
		// docs keep-alive: no answer.
	case "ForceEndTurn":
		// docs voice-agent-force-end-turn: needs a Flux (v2) listen
		// provider, else a FORCE_END_TURN_UNSUPPORTED Warning; with no
		// turn in progress (the fake's turns are injected and end at
		// once) it is ignored.
		if !ss.fluxListen {
			err = ss.send(notice{Type: "Warning", Code: WarnForceEndTurnUnsup, Description: "ForceEndTurn needs a v2 listen provider."})
		}
	case "InjectUserMessage":
		var content string
		if json.Unmarshal(msg["content"], &content) != nil {
			return unparsable("InjectUserMessage needs a string content.")
		}
		err = ss.userTurn(content)
	case "InjectAgentMessage":
		var message string
		if json.Unmarshal(msg["message"], &message) != nil {
			return unparsable("InjectAgentMessage needs a string message.")
		}
		err = ss.agentSays(message)
	case "FunctionCallResponse":
		var r struct {
			ID      string  `json:"id"`
			Name    *string `json:"name"`
			Content *string `json:"content"`
		}
		if json.Unmarshal(data, &r) != nil || r.Name == nil || r.Content == nil {
			return unparsable("FunctionCallResponse needs a string name and content.")
		}
		err = ss.functionResult(r.ID, *r.Name, *r.Content)
	default:
		// docs voice-agent-errors-warnings: "incorrect message types".
		return unparsable("Unknown message type " + typ + ".")
	}
	if err != nil {
		end := ss.ended(err)
		return &end
	}
	return nil
}

// checkSettings is a light check of a Settings message (AsyncAPI spec,
// AgentV1Settings: audio and agent required; agent an object or the id of a
// stored configuration; think and speak an object or an array of them). It
// returns what is wrong, or "".
func checkSettings(msg map[string]json.RawMessage) string {
	if !isJSON(msg["audio"], '{') {
		return "Settings needs an audio object."
	}
	agent := msg["agent"]
	if isJSON(agent, '"') {
		return ""
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(agent, &fields) != nil {
		return "Settings needs an agent object or string."
	}
	for _, k := range []string{"think", "speak"} {
		if v, ok := fields[k]; ok && !objectOrArray(v) {
			return "agent." + k + " must be an object or an array."
		}
	}
	if c, ok := fields["context"]; ok {
		return checkContext(c)
	}
	return ""
}

// checkContext checks agent.context (AsyncAPI spec,
// ...SettingsAgentOneOf0Context: messages, each a History in one of two
// forms: type, role (user or assistant) and content; or type and
// function_calls, each with id, name, client_side, arguments and response).
func checkContext(c json.RawMessage) string {
	var ctx struct {
		Messages []map[string]json.RawMessage `json:"messages"`
	}
	if json.Unmarshal(c, &ctx) != nil {
		return "agent.context must be an object with a messages array."
	}
	for i, m := range ctx.Messages {
		var typ, role, content string
		_ = json.Unmarshal(m["type"], &typ)
		_ = json.Unmarshal(m["role"], &role)
		bad := fmt.Sprintf("agent.context.messages[%d] is not a History message.", i)
		if typ != "History" {
			return bad
		}
		if calls, ok := m["function_calls"]; ok {
			var list []struct {
				ID, Name, Arguments, Response *string
				ClientSide                    *bool `json:"client_side"`
			}
			if json.Unmarshal(calls, &list) != nil || len(list) == 0 {
				return bad
			}
			for _, f := range list {
				if f.ID == nil || f.Name == nil || f.Arguments == nil || f.Response == nil || f.ClientSide == nil {
					return bad
				}
			}
			continue
		}
		if (role != "user" && role != "assistant") || json.Unmarshal(m["content"], &content) != nil {
			return bad
		}
	}
	return ""
}

// learnSettings keeps what the fake's turns need from valid Settings.
func (ss *session) learnSettings(msg map[string]json.RawMessage) {
	var s struct {
		Flags struct {
			History *bool `json:"history"`
		} `json:"flags"`
	}
	_ = json.Unmarshal(mustJSON(msg), &s)
	// AsyncAPI spec, Settings flags.history: on by default.
	ss.history = s.Flags.History == nil || *s.Flags.History
	var agent struct {
		Think  json.RawMessage `json:"think"`
		Listen struct {
			Provider struct {
				Version string `json:"version"`
			} `json:"provider"`
		} `json:"listen"`
	}
	if json.Unmarshal(msg["agent"], &agent) == nil {
		ss.functions = functionsOf(agent.Think)
		ss.fluxListen = agent.Listen.Provider.Version == "v2"
	}
}

// isJSON says whether v is a JSON value that starts with first ('{' an
// object, '[' an array, '"' a string).
func isJSON(v json.RawMessage, first byte) bool {
	return len(v) > 0 && v[0] == first && json.Valid(v)
}

// objectOrArray: an object, or an array of objects.
func objectOrArray(v json.RawMessage) bool {
	if isJSON(v, '{') {
		return true
	}
	var items []json.RawMessage
	if !isJSON(v, '[') || json.Unmarshal(v, &items) != nil {
		return false
	}
	for _, it := range items {
		if !isJSON(it, '{') {
			return false
		}
	}
	return true
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
