package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"sync"
)

// conversationRecord is what the relay keeps of an agent session to carry it
// to a new Deepgram connection: the Settings that reached Deepgram (after
// the policy), the updates Deepgram acknowledged, and the conversation as
// Deepgram reported it. Deepgram's documented way past its two-hour limit
// is a new connection whose Settings carries the prior turns in
// agent.context.messages (DESIGN §3); the turns kept here are in exactly
// that shape (AsyncAPI spec: AgentV1History and
// AgentV1Settings.agent.context.messages share their two forms, a role and
// content, or function_calls).
//
// Nothing is parsed whole but once per move: an acknowledgement moves an
// update from one list to another, and the Settings is laid out with them
// only when a move needs it. The client's pipe writes the Settings and
// updates, Deepgram's pipe the turns and acknowledgements: hence the lock,
// taken once per text message, never per audio frame.
type conversationRecord struct {
	mu sync.Mutex
	// settings is the Settings as it reached Deepgram; nil until the
	// client sends one.
	settings []byte
	// pending are the updates sent and not yet acknowledged, oldest
	// first (Deepgram acknowledges each kind with its own message);
	// applied those acknowledged, in order, each superseded one taken
	// out. updateBytes is what both hold.
	pending, applied []pendingUpdate
	updateBytes      int
	// prior are the turns the client's own Settings gave (its
	// agent.context), turns those Deepgram reported since; turnBytes is
	// what both hold, and limit bounds it, the oldest going first.
	// dropped counts those.
	prior, turns              []json.RawMessage
	turnBytes, limit, dropped int
	// sawHistory: Deepgram sends History (flags.history, on by default),
	// so ConversationText, which says the same, is no longer recorded.
	sawHistory bool
	// lost: the record cannot follow the session any more (the Settings
	// or its updates too big to keep, or an update lost in a move), so
	// the session is not carried again.
	lost string
}

// maxRecordedSettings bounds the Settings a record keeps with its updates: a
// Settings with a long prompt and many functions is some tens of KiB, and
// every live agent session keeps one. maxPendingUpdates bounds the updates
// awaiting acknowledgement. A session past either is not carried.
const (
	maxRecordedSettings = 128 << 10
	maxPendingUpdates   = 64
)

// pendingUpdate is one Update message the client sent, as it went on, and
// the move generation it was sent in.
type pendingUpdate struct {
	ack   string // the message that acknowledges it (PromptUpdated, ...)
	msg   []byte
	epoch int
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

// sent records a client message that went on toward Deepgram in move
// generation epoch: the Settings, or an update awaiting its
// acknowledgement. Other kinds are not kept.
func (r *conversationRecord) sent(kind string, msg []byte, epoch int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case kind == "Settings" && r.settings == nil:
		if len(msg) > maxRecordedSettings {
			r.lost = "the Settings is too big to keep"
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
					r.prior = append(r.prior, t)
					r.turnBytes += len(t)
				}
			}
			r.trim()
		}
	case updateAcks[kind] != "" && r.settings != nil:
		if len(r.pending) >= maxPendingUpdates || len(r.settings)+r.updateBytes+len(msg) > maxRecordedSettings {
			// Deepgram may apply it; the record could not follow.
			r.lost = "too many updates, or too big, to keep"
			return
		}
		r.pending = append(r.pending, pendingUpdate{ack: updateAcks[kind], msg: bytes.Clone(msg), epoch: epoch})
		r.updateBytes += len(msg)
	}
}

// acknowledged moves the oldest update of ack's kind to the applied ones, as
// Deepgram applied it; one that replaces a block (agent.speak, agent.think,
// agent.listen: DESIGN §3) supersedes those applied before it, and a new
// think block, which holds its own prompt, the prompts added before it.
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
	if ack != "PromptUpdated" {
		kept := r.applied[:0]
		for _, a := range r.applied {
			if a.ack == ack || (ack == "ThinkUpdated" && a.ack == "PromptUpdated") {
				r.updateBytes -= len(a.msg)
				continue
			}
			kept = append(kept, a)
		}
		r.applied = kept
	}
	r.applied = append(r.applied, u)
}

// moved forgets the updates sent before the move's generation epoch and
// never acknowledged: they went to the connection left behind, which may or
// may not have applied them, and the new one has not. It loses the record
// when the move dropped a text message of the client's (an update among
// them, perhaps), since what Deepgram holds is then unknown.
func (r *conversationRecord) moved(epoch int, textDropped bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.pending[:0]
	for _, u := range r.pending {
		if u.epoch >= epoch {
			kept = append(kept, u)
		} else {
			r.updateBytes -= len(u.msg)
		}
	}
	r.pending = kept
	if textDropped {
		r.lost = "a move dropped a client text message"
	}
}

// lose marks the record as one that cannot follow the session any more.
func (r *conversationRecord) lose(why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lost == "" {
		r.lost = why
	}
}

// heard records one turn Deepgram reported. History is the record once it
// has been seen; ConversationText stands in for it until then (a session
// with flags.history off never sends History). The client's own prior turns
// stay: Deepgram does not report them (its docs do not say it does, and the
// strict fake follows them).
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
		for _, old := range r.turns {
			r.turnBytes -= len(old)
		}
		r.turns = r.turns[:0]
	}
	if kind == "ConversationText" && r.sawHistory {
		return
	}
	r.turns = append(r.turns, t)
	r.turnBytes += len(t)
	r.trim()
}

// trim drops the oldest turns, the client's prior ones first, past the limit.
func (r *conversationRecord) trim() {
	for r.turnBytes > r.limit {
		list := &r.prior
		if len(r.prior) == 0 {
			list = &r.turns
		}
		if len(*list) == 0 {
			return
		}
		r.turnBytes -= len((*list)[0])
		(*list)[0] = nil
		*list = (*list)[1:]
		r.dropped++
	}
}

// errStoredAgent: a Settings whose agent is a stored configuration's id has
// no agent.context to carry the turns in.
var errStoredAgent = errors.New("the agent is a stored configuration: no context to carry")

// resumeSettings is the Settings for a new Deepgram connection: the one
// applied, with the acknowledged updates laid over it (UpdatePrompt adds to
// agent.think.prompt: docs voice-agent-update-prompt; the others replace
// their block), the recorded turns as its agent.context.messages and no
// agent.greeting (the user would hear it mid-call). It also returns how many
// turns it carries.
func (r *conversationRecord) resumeSettings() ([]byte, int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.lost != "":
		return nil, 0, errors.New(r.lost)
	case r.settings == nil:
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
	for _, u := range r.applied {
		update, err := decodeObject(u.msg)
		if err != nil {
			return nil, 0, err
		}
		applyUpdate(agent, u.ack, update)
	}
	delete(agent, "greeting")
	ctx, _ := agent["context"].(map[string]any)
	if ctx == nil {
		ctx = map[string]any{}
		agent["context"] = ctx
	}
	// An array, never null, even with no turn yet (the spec's type).
	messages := make([]json.RawMessage, 0, len(r.prior)+len(r.turns))
	messages = append(append(messages, r.prior...), r.turns...)
	ctx["messages"] = messages
	b, err := json.Marshal(settings)
	return b, len(messages), err
}

// applyUpdate lays one acknowledged update over the Settings' agent block.
func applyUpdate(agent map[string]any, ack string, update map[string]any) {
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
