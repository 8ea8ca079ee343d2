package fakedeepgram

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// agentState is what a strict agent session remembers; only its reader
// touches it.
type agentState struct {
	applied    bool
	history    bool
	fluxListen bool
	// functions maps each function of the Settings (or the last
	// UpdateThink) to whether it runs on the client.
	functions map[string]bool
	// pending is each client-side FunctionCallRequest not yet answered,
	// by id, to its name.
	pending map[string]string
	calls   int
	// speaking is closed when the agent's last reply has been sent whole;
	// nil before the first.
	speaking chan struct{}
}

// Turn audio: ReplyFrames binary messages of ReplyFrameBytes (silence,
// linear16 24 kHz: 40 ms each), one every replyFrameGap, so the agent is
// speaking for a moment (see InjectAgentMessage).
const (
	// ReplyFrames is how many audio messages a reply has.
	ReplyFrames = 3
	// ReplyFrameBytes is the size of each.
	ReplyFrameBytes = 1920
	replyFrameGap   = 40 * time.Millisecond
)

// ReplyPrefix starts the assistant's reply to a user message: "You said: "
// and the message.
const ReplyPrefix = "You said: "

// conversationText is a turn's text (AsyncAPI spec, AgentV1ConversationText).
type conversationText struct {
	Type    string `json:"type"`
	Role    string `json:"role"`
	Content string `json:"content"`
}

// functionCall is one call of a FunctionCallRequest, and of a History's
// function_calls with its response (AsyncAPI spec).
type functionCall struct {
	ID         string  `json:"id"`
	Name       string  `json:"name"`
	Arguments  string  `json:"arguments"`
	ClientSide bool    `json:"client_side"`
	Response   *string `json:"response,omitempty"`
}

// userTurn plays one turn for InjectUserMessage{content} (docs:
// voice-agent-inject-user-message; the message order of docs
// voice-agent-message-flow): the user's text, History, AgentThinking, then
// a function call when content is "call <name>" and <name> is one of the
// session's functions, else the assistant's reply. A turn waits for the
// previous reply's audio: the fake models no barge-in.
func (ss *session) userTurn(content string) error {
	ss.waitSpeech()
	msgs := []any{conversationText{Type: "ConversationText", Role: "user", Content: content}}
	if ss.history {
		msgs = append(msgs, conversationText{Type: "History", Role: "user", Content: content})
	}
	msgs = append(msgs, map[string]string{"type": "AgentThinking", "content": "The user said something."})
	if err := ss.sendAll(msgs...); err != nil {
		return err
	}
	name, isCall := strings.CutPrefix(content, "call ")
	clientSide, known := ss.functions[name]
	if !isCall || !known {
		return ss.reply(ReplyPrefix+content, true)
	}
	ss.calls++
	call := functionCall{ID: "fake-call-" + strconv.Itoa(ss.calls), Name: name, Arguments: "{}", ClientSide: clientSide}
	if err := ss.send(map[string]any{"type": "FunctionCallRequest", "functions": []functionCall{call}}); err != nil {
		return err
	}
	if clientSide {
		if ss.pending == nil {
			ss.pending = map[string]string{}
		}
		ss.pending[call.ID] = name
		return nil
	}
	// A function with an endpoint runs on Deepgram's side, which then
	// tells the client its result (AsyncAPI spec,
	// AgentV1ReceiveFunctionCallResponse). The fake calls no endpoint.
	result := "fake result of " + name
	if err := ss.send(map[string]string{"type": "FunctionCallResponse", "id": call.ID, "name": name, "content": result}); err != nil {
		return err
	}
	return ss.afterCall(call, result)
}

// functionResult takes a client's FunctionCallResponse. One that answers a
// pending client-side call resumes the turn. One that answers none (an
// unknown id, or none) is ignored: Deepgram publishes no error for it, the
// agent has no turn to resume, and a fatal Error would be documented.
func (ss *session) functionResult(id, name, content string) error {
	pending, ok := ss.pending[id]
	if !ok || id == "" {
		return nil
	}
	delete(ss.pending, id)
	return ss.afterCall(functionCall{ID: id, Name: pending, Arguments: "{}", ClientSide: true}, content)
}

// afterCall records a finished call in History and replies.
func (ss *session) afterCall(call functionCall, result string) error {
	if ss.history {
		call.Response = &result
		if err := ss.send(map[string]any{"type": "History", "function_calls": []functionCall{call}}); err != nil {
			return err
		}
	}
	return ss.reply("The "+call.Name+" function said: "+result, true)
}

// agentSays plays InjectAgentMessage{message}: refused while the agent is
// speaking (AsyncAPI spec, InjectAgentMessage behavior "default" and
// AgentV1InjectionRefused), else said.
func (ss *session) agentSays(message string) error {
	if ss.isSpeaking() {
		return ss.send(map[string]string{"type": "InjectionRefused", "message": "The agent is speaking."})
	}
	return ss.reply(message, false)
}

// reply speaks text: ConversationText and History at once, then (for a turn)
// AgentStartedSpeaking, then the audio, AgentAudioDone and (for a turn) a
// LatencyReport from a goroutine of its own, so that the agent is speaking
// for a moment while the reader goes on.
func (ss *session) reply(text string, turn bool) error {
	msgs := []any{conversationText{Type: "ConversationText", Role: "assistant", Content: text}}
	if ss.history {
		msgs = append(msgs, conversationText{Type: "History", Role: "assistant", Content: text})
	}
	if turn {
		// AsyncAPI spec, AgentV1AgentStartedSpeaking: three latencies, in
		// seconds, required.
		msgs = append(msgs, map[string]any{"type": "AgentStartedSpeaking", "total_latency": 0.5, "tts_latency": 0.2, "ttt_latency": 0.3})
	}
	if err := ss.sendAll(msgs...); err != nil {
		return err
	}
	done := make(chan struct{})
	ss.speaking = done
	ss.streams.Add(1)
	go func() {
		defer ss.streams.Done()
		defer close(done)
		frame := make([]byte, ReplyFrameBytes)
		for i := 0; i < ReplyFrames; i++ {
			if i > 0 {
				select {
				case <-time.After(replyFrameGap):
				case <-ss.ctx.Done():
					return
				}
			}
			if ss.c.Write(context.Background(), websocket.MessageBinary, frame) != nil {
				return
			}
		}
		// docs: AgentAudioDone means sent, not heard.
		if ss.send(typed{Type: "AgentAudioDone"}) != nil || !turn {
			return
		}
		_ = ss.send(map[string]any{"type": "LatencyReport", "ttt_token_latency": 0.25, "ttt_text_latency": 0.3, "tts_latency": 0.2, "total_latency": 0.5})
	}()
	return nil
}

// isSpeaking says whether the last reply is still being sent.
func (ss *session) isSpeaking() bool {
	if ss.speaking == nil {
		return false
	}
	select {
	case <-ss.speaking:
		return false
	default:
		return true
	}
}

// waitSpeech waits until the last reply has been sent, or the session ends.
func (ss *session) waitSpeech() {
	if ss.speaking != nil {
		select {
		case <-ss.speaking:
		case <-ss.ctx.Done():
		}
	}
}

func (ss *session) sendAll(msgs ...any) error {
	for _, m := range msgs {
		if err := ss.send(m); err != nil {
			return err
		}
	}
	return nil
}

// functionsOf reads the functions of a think block, an object or an array
// of them (fallback providers): each name, and whether it runs on the
// client (AsyncAPI spec, ThinkSettingsV1FunctionsItems: no endpoint means
// the client calls it).
func functionsOf(think json.RawMessage) map[string]bool {
	type block struct {
		Functions []struct {
			Name     string          `json:"name"`
			Endpoint json.RawMessage `json:"endpoint"`
		} `json:"functions"`
	}
	var blocks []block
	if isJSON(think, '[') {
		_ = json.Unmarshal(think, &blocks)
	} else {
		var b block
		if json.Unmarshal(think, &b) == nil {
			blocks = []block{b}
		}
	}
	out := map[string]bool{}
	for _, b := range blocks {
		for _, f := range b.Functions {
			if f.Name != "" {
				out[f.Name] = len(f.Endpoint) == 0 || string(f.Endpoint) == "null"
			}
		}
	}
	return out
}
