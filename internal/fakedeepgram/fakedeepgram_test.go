package fakedeepgram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// settings is a minimal valid Settings: audio and agent are required.
const settings = `{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}},"agent":{}}`

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	s := Start(opts)
	t.Cleanup(s.Close)
	return s
}

func dial(t *testing.T, url string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c, resp
}

func send(t *testing.T, c *websocket.Conn, typ websocket.MessageType, msg string) {
	t.Helper()
	if err := c.Write(context.Background(), typ, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func next(t *testing.T, c *websocket.Conn) (websocket.MessageType, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	typ, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, data
}

// want reads one text message of the given type and returns its fields.
func want(t *testing.T, c *websocket.Conn, typ string) map[string]any {
	t.Helper()
	mt, data := next(t, c)
	var m map[string]any
	if mt != websocket.MessageText || json.Unmarshal(data, &m) != nil || m["type"] != typ {
		t.Fatalf("want %s, got %v %s", typ, mt, data)
	}
	return m
}

// wantClose reads until the close and checks its code and reason.
func wantClose(t *testing.T, c *websocket.Conn, code websocket.StatusCode, reason string) {
	t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, data, err := c.Read(ctx)
		cancel()
		if err == nil {
			t.Logf("before the close: %s", data)
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code || ce.Reason != reason {
			t.Fatalf("want close %d %q, got %v", code, reason, err)
		}
		return
	}
}

// agentSession dials the agent and applies Settings.
func agentSession(t *testing.T, s *Server, set string) *websocket.Conn {
	t.Helper()
	c, _ := dial(t, s.URL+"/v1/agent/converse", nil)
	want(t, c, "Welcome")
	send(t, c, websocket.MessageText, set)
	want(t, c, "SettingsApplied")
	return c
}

func TestAgentWelcome(t *testing.T) {
	s := start(t, Options{})
	c, resp := dial(t, s.URL+"/v1/agent/converse", nil)
	m := want(t, c, "Welcome")
	if id := resp.Header.Get("dg-request-id"); id == "" || m["request_id"] != id {
		t.Fatalf("Welcome %v, dg-request-id %q", m, id)
	}
	send(t, c, websocket.MessageText, settings)
	want(t, c, "SettingsApplied")
}

func TestAgentFatalErrors(t *testing.T) {
	s := start(t, Options{})
	for _, tc := range []struct {
		name  string
		setup bool // Settings first
		typ   websocket.MessageType
		msg   string
		code  string
	}{
		{"text before Settings", false, websocket.MessageText, `{"type":"KeepAlive"}`, ErrNonSettingsFirst},
		{"audio before Settings", false, websocket.MessageBinary, "\x00\x01", ErrNonSettingsFirst},
		{"not JSON", false, websocket.MessageText, `{"type":`, ErrUnparsable},
		{"Settings twice", true, websocket.MessageText, settings, ErrSettingsApplied},
		{"no audio", false, websocket.MessageText, `{"type":"Settings","agent":{}}`, ErrInvalidSettings},
		{"no agent", false, websocket.MessageText, `{"type":"Settings","audio":{}}`, ErrInvalidSettings},
		{"agent a number", false, websocket.MessageText, `{"type":"Settings","audio":{},"agent":7}`, ErrInvalidSettings},
		{"think a string", false, websocket.MessageText, `{"type":"Settings","audio":{},"agent":{"think":"x"}}`, ErrInvalidSettings},
		{"speak an array of strings", false, websocket.MessageText, `{"type":"Settings","audio":{},"agent":{"speak":["x"]}}`, ErrInvalidSettings},
		{"unknown type", true, websocket.MessageText, `{"type":"Echo"}`, ErrUnparsable},
		{"type not a string", true, websocket.MessageText, `{"type":1}`, ErrUnparsable},
		{"UpdatePrompt without prompt", true, websocket.MessageText, `{"type":"UpdatePrompt"}`, ErrUnparsable},
		{"FunctionCallResponse without content", true, websocket.MessageText, `{"type":"FunctionCallResponse","id":"x","name":"f"}`, ErrUnparsable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *websocket.Conn
			if tc.setup {
				c = agentSession(t, s, settings)
			} else {
				c, _ = dial(t, s.URL+"/v1/agent/converse", nil)
				want(t, c, "Welcome")
			}
			send(t, c, tc.typ, tc.msg)
			if m := want(t, c, "Error"); m["code"] != tc.code || m["description"] == "" {
				t.Fatalf("Error %v, want %s", m, tc.code)
			}
			wantClose(t, c, AgentErrorClose, tc.code)
			if got := <-s.Closed(); got.Code != AgentErrorClose || got.Reason != tc.code {
				t.Fatalf("Closed %+v", got)
			}
		})
	}
}

func TestAgentSettingsShapes(t *testing.T) {
	s := start(t, Options{})
	for _, set := range []string{
		`{"type":"Settings","audio":{},"agent":"3f1e0c2a-0000-4000-8000-000000000000"}`,
		`{"type":"Settings","audio":{},"agent":{"think":[{"provider":{"type":"open_ai"}},{"provider":{"type":"anthropic"}}],"speak":[{"provider":{}}]}}`,
		`{"type":"Settings","audio":{},"agent":{},"tags":["a"],"flags":{"history":false},"mip_opt_out":true,"experimental":true}`,
	} {
		agentSession(t, s, set)
	}
}

func TestAgentAcks(t *testing.T) {
	s := start(t, Options{})
	c := agentSession(t, s, settings)
	send(t, c, websocket.MessageText, `{"type":"KeepAlive"}`) // no answer
	send(t, c, websocket.MessageText, `{"type":"Fake.Tell","message":{"type":"Marker"}}`)
	want(t, c, "Marker")
	for req, ack := range map[string]string{
		`{"type":"UpdatePrompt","prompt":"be brief"}`:                       "PromptUpdated",
		`{"type":"UpdateSpeak","speak":{"provider":{"type":"deepgram"}}}`:   "SpeakUpdated",
		`{"type":"UpdateThink","think":[{"provider":{}}]}`:                  "ThinkUpdated",
		`{"type":"UpdateListen","listen":{"provider":{"type":"deepgram"}}}`: "ListenUpdated",
	} {
		send(t, c, websocket.MessageText, req)
		want(t, c, ack)
	}
	send(t, c, websocket.MessageText, `{"type":"ForceEndTurn"}`)
	if m := want(t, c, "Warning"); m["code"] != WarnForceEndTurnUnsup {
		t.Fatalf("ForceEndTurn without Flux: %v", m)
	}
	flux := agentSession(t, s, `{"type":"Settings","audio":{},"agent":{"listen":{"provider":{"type":"deepgram","version":"v2"}}}}`)
	send(t, flux, websocket.MessageText, `{"type":"ForceEndTurn"}`)
	send(t, flux, websocket.MessageText, `{"type":"Fake.Echo","n":1}`)
	want(t, flux, "Fake.Echo")
}

// wantReply reads an assistant reply of a turn: text, History, started,
// audio, done, report.
func wantReply(t *testing.T, c *websocket.Conn, text string) {
	t.Helper()
	if m := want(t, c, "ConversationText"); m["role"] != "assistant" || m["content"] != text {
		t.Fatalf("reply %v, want %q", m, text)
	}
	want(t, c, "History")
	if m := want(t, c, "AgentStartedSpeaking"); m["total_latency"] == nil || m["tts_latency"] == nil || m["ttt_latency"] == nil {
		t.Fatalf("AgentStartedSpeaking %v", m)
	}
	for i := 0; i < ReplyFrames; i++ {
		if typ, data := next(t, c); typ != websocket.MessageBinary || len(data) != ReplyFrameBytes {
			t.Fatalf("audio frame %d: %v %d B", i, typ, len(data))
		}
	}
	want(t, c, "AgentAudioDone")
	want(t, c, "LatencyReport")
}

func TestAgentTurns(t *testing.T) {
	s := start(t, Options{})
	const withFunctions = `{"type":"Settings","audio":{},"agent":{"think":[{"provider":{},"functions":[{"name":"lookup"}]},` +
		`{"provider":{},"functions":[{"name":"remote","endpoint":{"url":"https://example.com/f"}}]}]}}`
	c := agentSession(t, s, withFunctions)

	send(t, c, websocket.MessageText, `{"type":"InjectUserMessage","content":"hello"}`)
	if m := want(t, c, "ConversationText"); m["role"] != "user" || m["content"] != "hello" {
		t.Fatalf("user text %v", m)
	}
	if m := want(t, c, "History"); m["role"] != "user" || m["content"] != "hello" {
		t.Fatalf("History %v", m)
	}
	want(t, c, "AgentThinking")
	wantReply(t, c, ReplyPrefix+"hello")

	// A client-side function: the turn waits for its response.
	send(t, c, websocket.MessageText, `{"type":"InjectUserMessage","content":"call lookup"}`)
	want(t, c, "ConversationText")
	want(t, c, "History")
	want(t, c, "AgentThinking")
	req := want(t, c, "FunctionCallRequest")
	fns, _ := req["functions"].([]any)
	call, _ := fns[0].(map[string]any)
	if len(fns) != 1 || call["name"] != "lookup" || call["client_side"] != true || call["id"] == "" {
		t.Fatalf("FunctionCallRequest %v", req)
	}
	// An unknown id is ignored: the next answer is the marker's.
	send(t, c, websocket.MessageText, `{"type":"FunctionCallResponse","id":"nope","name":"lookup","content":"x"}`)
	send(t, c, websocket.MessageText, `{"type":"Fake.Tell","message":{"type":"Marker"}}`)
	want(t, c, "Marker")
	send(t, c, websocket.MessageText, `{"type":"FunctionCallResponse","id":"`+call["id"].(string)+`","name":"lookup","content":"42"}`)
	h := want(t, c, "History")
	hc, _ := h["function_calls"].([]any)
	if len(hc) != 1 || hc[0].(map[string]any)["response"] != "42" {
		t.Fatalf("History %v", h)
	}
	wantReply(t, c, "The lookup function said: 42")

	// A function with an endpoint runs on Deepgram's side.
	send(t, c, websocket.MessageText, `{"type":"InjectUserMessage","content":"call remote"}`)
	want(t, c, "ConversationText")
	want(t, c, "History")
	want(t, c, "AgentThinking")
	req = want(t, c, "FunctionCallRequest")
	if req["functions"].([]any)[0].(map[string]any)["client_side"] != false {
		t.Fatalf("FunctionCallRequest %v", req)
	}
	want(t, c, "FunctionCallResponse")
	want(t, c, "History")
	wantReply(t, c, "The remote function said: fake result of remote")
}

func TestAgentInjectAgentMessage(t *testing.T) {
	s := start(t, Options{})
	c := agentSession(t, s, `{"type":"Settings","audio":{},"agent":{},"flags":{"history":false}}`)
	send(t, c, websocket.MessageText, `{"type":"InjectAgentMessage","message":"one"}`)
	send(t, c, websocket.MessageText, `{"type":"InjectAgentMessage","message":"two"}`)
	if m := want(t, c, "ConversationText"); m["content"] != "one" {
		t.Fatalf("%v", m)
	}
	refused := false
	for n := 0; n < ReplyFrames+2; n++ {
		typ, data := next(t, c)
		refused = refused || typ == websocket.MessageText && bytes.Contains(data, []byte(`"InjectionRefused"`))
		if bytes.Contains(data, []byte("AgentAudioDone")) {
			break
		}
	}
	if !refused {
		t.Fatal("no InjectionRefused while the agent spoke")
	}
}

func TestAgentAudio(t *testing.T) {
	s := start(t, Options{})
	c := agentSession(t, s, settings)
	send(t, c, websocket.MessageBinary, "\x10\x27\x00\x00") // 10000, 0
	send(t, c, websocket.MessageText, `{"type":"Fake.Echo"}`)
	want(t, c, "Fake.Echo") // the audio was not echoed
	if h := s.Heard(); h.Messages != 1 || h.Bytes != 4 || h.Peak != 10000 {
		t.Fatalf("Heard %+v", h)
	}

	echo := start(t, Options{EchoAudio: true})
	c = agentSession(t, echo, settings)
	send(t, c, websocket.MessageBinary, "\x01\x02\x03")
	if typ, data := next(t, c); typ != websocket.MessageBinary || string(data) != "\x01\x02\x03" {
		t.Fatalf("echo %v %q", typ, data)
	}
}

func TestAgentTimers(t *testing.T) {
	t.Run("client timeout", func(t *testing.T) {
		s := start(t, Options{ClientTimeout: 300 * time.Millisecond})
		c := agentSession(t, s, settings)
		for i := 0; i < 4; i++ { // KeepAlive keeps it open
			time.Sleep(150 * time.Millisecond)
			send(t, c, websocket.MessageText, `{"type":"KeepAlive"}`)
		}
		if m := want(t, c, "Error"); m["code"] != ErrClientTimeout {
			t.Fatalf("%v", m)
		}
		wantClose(t, c, AgentErrorClose, ErrClientTimeout)
	})
	t.Run("session length", func(t *testing.T) {
		s := start(t, Options{ClientTimeout: -1, MaxSession: 600 * time.Millisecond, SessionWarning: 300 * time.Millisecond})
		c := agentSession(t, s, settings)
		if m := want(t, c, "Warning"); m["code"] != WarnSessionLength {
			t.Fatalf("%v", m)
		}
		if m := want(t, c, "Error"); m["code"] != ErrSessionLength {
			t.Fatalf("%v", m)
		}
		wantClose(t, c, AgentErrorClose, ErrSessionLength)
	})
}

func TestListenV1(t *testing.T) {
	s := start(t, Options{ClientTimeout: 400 * time.Millisecond})
	c, _ := dial(t, s.URL+"/v1/listen?encoding=linear16", nil)
	send(t, c, websocket.MessageBinary, string(make([]byte, 3200)))
	if m := want(t, c, "Results"); m["is_final"] != false || m["channel"] == nil || m["metadata"] == nil {
		t.Fatalf("Results %v", m)
	}
	send(t, c, websocket.MessageText, `{"type":"KeepAlive"}`)
	send(t, c, websocket.MessageText, `{"type":"Finalize"}`)
	if m := want(t, c, "Results"); m["is_final"] != true || m["from_finalize"] != true {
		t.Fatalf("final Results %v", m)
	}
	send(t, c, websocket.MessageText, `{"type":"CloseStream"}`)
	want(t, c, "Metadata")
	wantClose(t, c, websocket.StatusNormalClosure, "")

	c, _ = dial(t, s.URL+"/v1/listen", nil)
	send(t, c, websocket.MessageText, `{"type":"Settings"}`)
	wantClose(t, c, ListenBadData, "DATA-0000")

	c, _ = dial(t, s.URL+"/v1/listen", nil)
	wantClose(t, c, ListenTimeout, "NET-0001")
}

func TestListenV2(t *testing.T) {
	s := start(t, Options{})
	c, _ := dial(t, s.URL+"/v2/listen?model=flux-general-en", nil)
	if m := want(t, c, "Connected"); m["sequence_id"] != 0.0 || m["request_id"] == "" {
		t.Fatalf("Connected %v", m)
	}
	send(t, c, websocket.MessageText, `{"type":"Configure","thresholds":{"eot_threshold":0.8},"keyterms":["dgrelay"]}`)
	if m := want(t, c, "ConfigureSuccess"); m["sequence_id"] != 1.0 || m["keyterms"].([]any)[0] != "dgrelay" {
		t.Fatalf("ConfigureSuccess %v", m)
	}
	send(t, c, websocket.MessageBinary, string(make([]byte, 640)))
	if m := want(t, c, "TurnInfo"); m["event"] != "Update" || m["sequence_id"] != 2.0 {
		t.Fatalf("TurnInfo %v", m)
	}
	send(t, c, websocket.MessageText, `{"type":"CloseStream"}`)
	wantClose(t, c, websocket.StatusNormalClosure, "")
}

func TestAuth(t *testing.T) {
	s := start(t, Options{APIKey: "key", AccessToken: "tok"})
	url := s.URL + "/v1/agent/converse"
	for _, tc := range []struct {
		name   string
		header string
		protos []string
		ok     bool
	}{
		{"token header", "Token key", nil, true},
		{"token header, lower case", "token key", nil, true},
		{"bearer header", "Bearer tok", nil, true},
		{"token subprotocol", "", []string{"token", "key"}, true},
		{"bearer subprotocol", "", []string{"bearer", "tok"}, true},
		{"wrong key", "Token nope", nil, false},
		{"key as bearer", "Bearer key", nil, false},
		{"nothing", "", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := &websocket.DialOptions{Subprotocols: tc.protos, HTTPHeader: http.Header{}}
			if tc.header != "" {
				opts.HTTPHeader.Set("Authorization", tc.header)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, url, opts)
			if !tc.ok {
				if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("dg-error") == "" {
					t.Fatalf("want 401 with dg-error, got %v %v", resp, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			if len(tc.protos) > 0 && c.Subprotocol() != tc.protos[0] {
				t.Fatalf("selected %q", c.Subprotocol())
			}
		})
	}
	only := start(t, Options{APIKey: "key"})
	if _, resp, err := websocket.Dial(context.Background(), only.URL+"/v1/agent/converse",
		&websocket.DialOptions{Subprotocols: []string{"bearer", "tok"}}); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bearer with no AccessToken: %v %v", resp, err)
	}
	if _, resp, err := websocket.Dial(context.Background(), only.URL+"/v1/nowhere",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Token key"}}}); err == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown path: %v %v", resp, err)
	}
}

func TestControlsBeforeSettings(t *testing.T) {
	s := start(t, Options{})
	c, _ := dial(t, s.URL+"/v1/agent/converse", nil)
	want(t, c, "Welcome")
	send(t, c, websocket.MessageText, `{"type":"Fake.Echo","text":"x"}`)
	if m := want(t, c, "Fake.Echo"); m["text"] != "x" {
		t.Fatalf("%v", m)
	}
	send(t, c, websocket.MessageText, `{"type":"Fake.Close","code":4000,"reason":"bye"}`)
	wantClose(t, c, 4000, "bye")
}

func TestLenient(t *testing.T) {
	s := start(t, Options{Lenient: true})
	c, _ := dial(t, s.URL+"/anywhere", nil)
	want(t, c, "Welcome")
	send(t, c, websocket.MessageBinary, "\x01")
	if typ, data := next(t, c); typ != websocket.MessageBinary || string(data) != "\x01" {
		t.Fatalf("%v %q", typ, data)
	}
	send(t, c, websocket.MessageText, `{"type":"Anything"}`)
	want(t, c, "Anything")
	send(t, c, websocket.MessageText, `{"type":"Settings"}`)
	want(t, c, "SettingsApplied")
}
