package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"sync"
)

// conversationRecord is what the relay keeps of an agent session to carry it
// to a new Deepgram connection: the Settings that reached Deepgram (after
// the policy), with the updates Deepgram acknowledged laid over it, and the
// conversation as Deepgram reported it. Deepgram's documented way past its
// two-hour limit is a new connection whose Settings carries the prior turns
// in agent.context.messages (DESIGN §3); the turns kept here are in exactly
// that shape (AsyncAPI spec: AgentV1History and
// AgentV1Settings.agent.context.messages share their two forms, a role and
// content, or function_calls).
//
// The client's pipe writes the Settings and updates, Deepgram's pipe the
// turns and acknowledgements: hence the lock, taken once per text message,
// never per audio frame.
type conversationRecord struct {
	mu sync.Mutex
	// settings is the Settings as Deepgram applied it, updates included;
	// nil until the client sends one.
	settings []byte
	// pending are the updates sent and not yet acknowledged, oldest
	// first: Deepgram acknowledges each kind with its own message.
	pending []pendingUpdate
	turns   []json.RawMessage
	// turnBytes is what turns hold; limit bounds it, the oldest turns
	// going first. dropped counts those.
	turnBytes, limit, dropped int
	// sawHistory: Deepgram sends History (flags.history, on by default),
	// so ConversationText, which says the same, is no longer recorded.
	sawHistory bool
	// tooBig: the Settings, with its updates, grew past
	// maxRecordedSettings; the session cannot be carried.
	tooBig bool
}

// maxRecordedSettings bounds the Settings a record keeps, updates included,
// and the updates awaiting acknowledgement together: a Settings with a long
// prompt and many functions is some tens of KiB, and every live agent
// session keeps one. A session past it is not carried to a new connection.
const maxRecordedSettings = 128 << 10

// pendingUpdate is one Update message the client sent, as it went on.
type pendingUpdate struct {
	ack string // the message that acknowledges it (PromptUpdated, ...)
	msg []byte
}

// updateAcks pairs each update with its acknowledgement (AsyncAPI spec:
// AgentV1UpdatePrompt → AgentV1PromptUpdated, and so on).
var updateAcks = map[string]string{
	"UpdatePrompt": "PromptUpdated",
	"UpdateSpeak":  "SpeakUpdated",
	"UpdateThink":  "ThinkUpdated",
	"UpdateListen": "ListenUpdated",
}

// historyTurn is one turn in Deepgram's History shape, and the only fields
// the relay replays of it: a message Deepgram sent with other fields goes
// on to a new connection without them.
type historyTurn struct {
	Type          string        `json:"type"`
	Role          string        `json:"role,omitempty"`
	Content       *string       `json:"content,omitempty"`
	FunctionCalls []historyCall `json:"function_calls,omitempty"`
}

// historyCall is one function call of a History turn (AsyncAPI spec,
// ...HistoryOneOf1FunctionCallsItems: id, name, client_side, arguments and
// response required; thought_signature for some Gemini models).
type historyCall struct {
	ID               string  `json:"id"`
	Name             string  `json:"name"`
	ClientSide       bool    `json:"client_side"`
	Arguments        string  `json:"arguments"`
	Response         string  `json:"response"`
	ThoughtSignature *string `json:"thought_signature,omitempty"`
}

// errNotATurn is a History or ConversationText the relay does not record:
// not in a documented shape.
var errNotATurn = errors.New("not a turn")

// parseTurn reads a History or ConversationText message into the History
// form, checked against the spec's shapes.
func parseTurn(msg []byte) (json.RawMessage, error) {
	var t historyTurn
	if err := json.Unmarshal(msg, &t); err != nil {
		return nil, err
	}
	t.Type = "History"
	switch {
	case t.Content != nil && (t.Role == "user" || t.Role == "assistant") && len(t.FunctionCalls) == 0:
	case t.Content == nil && t.Role == "" && len(t.FunctionCalls) > 0:
	default:
		return nil, errNotATurn
	}
	return json.Marshal(t)
}

// newConversationRecord keeps at most limit bytes of turns.
func newConversationRecord(limit int) *conversationRecord {
	return &conversationRecord{limit: limit}
}

// sent records a client message that went on to Deepgram: the Settings, or
// an update awaiting its acknowledgement. Other kinds are not kept.
func (r *conversationRecord) sent(kind string, msg []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case kind == "Settings" && r.settings == nil:
		if len(msg) > maxRecordedSettings {
			r.tooBig = true
			return
		}
		r.settings = bytes.Clone(msg)
		// The client's own prior turns (allowed by the policy, if any)
		// start the record.
		var s struct {
			Agent struct {
				Context struct {
					Messages []json.RawMessage `json:"messages"`
				} `json:"context"`
			} `json:"agent"`
		}
		if json.Unmarshal(msg, &s) == nil {
			for _, m := range s.Agent.Context.Messages {
				if t, err := parseTurn(m); err == nil {
					r.addTurn(t)
				}
			}
		}
	case updateAcks[kind] != "" && r.settings != nil:
		if len(r.pending) >= maxPendingUpdates || len(r.settings)+r.pendingBytes()+len(msg) > maxRecordedSettings {
			// Deepgram may apply it; the record could not follow.
			r.tooBig = true
			return
		}
		r.pending = append(r.pending, pendingUpdate{ack: updateAcks[kind], msg: bytes.Clone(msg)})
	}
}

// pendingBytes is what the updates awaiting acknowledgement hold.
func (r *conversationRecord) pendingBytes() int {
	n := 0
	for _, u := range r.pending {
		n += len(u.msg)
	}
	return n
}

// maxPendingUpdates bounds the updates awaiting Deepgram's acknowledgement: a
// client that sends them faster than Deepgram answers makes its session one
// that cannot be carried.
const maxPendingUpdates = 16

// acknowledged lays the oldest update of ack's kind over the Settings, as
// Deepgram applied it: UpdatePrompt appends to agent.think.prompt (docs:
// voice-agent-update-prompt), the others replace agent.speak, agent.think or
// agent.listen whole (DESIGN §3).
func (r *conversationRecord) acknowledged(ack string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := 0
	for i < len(r.pending) && r.pending[i].ack != ack {
		i++
	}
	if i == len(r.pending) {
		return
	}
	u := r.pending[i]
	r.pending = append(r.pending[:i], r.pending[i+1:]...)
	settings, err := decodeObject(r.settings)
	if err != nil {
		return
	}
	update, err := decodeObject(u.msg)
	if err != nil {
		return
	}
	agent, ok := settings["agent"].(map[string]any)
	if !ok {
		return
	}
	switch ack {
	case "PromptUpdated":
		// Deepgram adds to the prompt ("will add to – not replace – the
		// current prompt") without publishing a separator: a line
		// break keeps the two apart. With fallback providers (think an
		// array) each has its own prompt.
		add, _ := update["prompt"].(string)
		thinks := []any{agent["think"]}
		if list, ok := agent["think"].([]any); ok {
			thinks = list
		}
		for _, t := range thinks {
			if think, ok := t.(map[string]any); ok {
				prompt, _ := think["prompt"].(string)
				if prompt != "" {
					prompt += "\n"
				}
				think["prompt"] = prompt + add
			}
		}
	case "SpeakUpdated":
		agent["speak"] = update["speak"]
	case "ThinkUpdated":
		agent["think"] = update["think"]
	case "ListenUpdated":
		agent["listen"] = update["listen"]
	}
	b, err := json.Marshal(settings)
	if err != nil || len(b) > maxRecordedSettings {
		r.tooBig = true
		return
	}
	r.settings = b
}

// heard records one turn Deepgram reported. History is the record once it
// has been seen; ConversationText stands in for it until then (a session
// with flags.history off never sends History).
func (r *conversationRecord) heard(kind string, msg []byte) {
	t, err := parseTurn(msg)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if kind == "History" && !r.sawHistory {
		// What ConversationText recorded, History says again.
		r.sawHistory = true
		r.turns, r.turnBytes = r.turns[:0], 0
	}
	if kind == "ConversationText" && r.sawHistory {
		return
	}
	r.addTurn(t)
}

// addTurn appends t, dropping the oldest turns past the limit.
func (r *conversationRecord) addTurn(t json.RawMessage) {
	r.turns = append(r.turns, t)
	r.turnBytes += len(t)
	for r.turnBytes > r.limit && len(r.turns) > 0 {
		r.turnBytes -= len(r.turns[0])
		r.turns[0] = nil
		r.turns = r.turns[1:]
		r.dropped++
	}
}

// errStoredAgent: a Settings whose agent is a stored configuration's id has
// no agent.context to carry the turns in.
var errStoredAgent = errors.New("the agent is a stored configuration: no context to carry")

// resumeSettings is the Settings for a new Deepgram connection: the one
// applied, updates included, with the recorded turns as its
// agent.context.messages and without agent.greeting (the user would hear it
// mid-call). It also returns how many turns it carries.
func (r *conversationRecord) resumeSettings() ([]byte, int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tooBig {
		return nil, 0, errors.New("the Settings, with its updates, is too big to keep")
	}
	if r.settings == nil {
		return nil, 0, errors.New("no Settings recorded")
	}
	settings, err := decodeObject(r.settings)
	if err != nil {
		return nil, 0, err
	}
	agent, ok := settings["agent"].(map[string]any)
	if !ok {
		return nil, 0, errStoredAgent
	}
	delete(agent, "greeting")
	ctx, _ := agent["context"].(map[string]any)
	if ctx == nil {
		ctx = map[string]any{}
		agent["context"] = ctx
	}
	ctx["messages"] = append([]json.RawMessage(nil), r.turns...)
	b, err := json.Marshal(settings)
	return b, len(r.turns), err
}

// decodeObject reads a JSON object, numbers as written (json.Number), so that
// what is encoded again is what was read.
func decodeObject(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}
