package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// testWebhookSecret signs the test deliveries.
const testWebhookSecret = "whsec-test-0123456789abcdef0123456789abcdef"

// conversationSettings has a server-side function (it has an endpoint) and
// client secrets in two headers objects, as the React component's
// thinkApiKey and a function's own key arrive.
const conversationSettings = `{"type":"Settings","audio":{"input":{"encoding":"linear16","sample_rate":16000}},` +
	`"agent":{"think":{"provider":{"type":"open_ai"},"endpoint":{"url":"https://llm.example.com","headers":{"authorization":"Bearer sk-client-LLM-secret"}},` +
	`"functions":[{"name":"lookup","description":"d","endpoint":{"url":"https://fn.example.com","headers":{"x-key":"fn-client-secret"}}}]}}}`

// converse plays a conversation on a fresh agent session: Settings, two
// turns (the second calls lookup), an Error from Deepgram carrying the key,
// audio up, then the client's close. It returns Welcome's request_id.
func converse(t *testing.T, h *harness) string {
	t.Helper()
	c := h.dial("service=agent")
	write(t, c, websocket.MessageText, []byte(conversationSettings))
	welcome := expectType(t, c, "Welcome")
	expectType(t, c, "SettingsApplied")
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"hello there"}`))
	readUntil(t, c, "LatencyReport")
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"call lookup"}`))
	readUntil(t, c, "LatencyReport")
	if h.fake.Tell([]byte(`{"type":"Error","code":"TEST_FAILURE","description":"it said `+testAPIKey+`"}`)) != 1 {
		t.Fatal("the fake told no session")
	}
	readUntil(t, c, "Error")
	write(t, c, websocket.MessageBinary, make([]byte, 640))
	c.Close(websocket.StatusNormalClosure, "bye")
	h.upstreamClosed()
	return welcome["request_id"].(string)
}

// logLines are the JSON log lines whose message is msg.
func logLines(t *testing.T, logs, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestRequestIDInLogLines: Welcome's request_id is on the session's start
// and end lines, and on every line between (here, the conversation log's).
func TestRequestIDInLogLines(t *testing.T) {
	h := newHarness(t, map[string]string{"CONVERSATION_LOG": "on"}, fakedeepgram.Options{})
	id := converse(t, h)
	h.settled()
	logs := h.logs.String()
	start := logLines(t, logs, "session start")
	if len(start) != 1 || start[0]["request_id"] != id || start[0]["identity"] == "" {
		t.Fatalf("start lines %v, want one with request_id %s", start, id)
	}
	if end := sessionEnd(t, logs); end["request_id"] != id {
		t.Errorf("end line request_id %v, want %s", end["request_id"], id)
	}
	lines := logLines(t, logs, "conversation message")
	if len(lines) < 10 {
		t.Fatalf("%d conversation lines:\n%s", len(lines), logs)
	}
	for _, l := range lines {
		// The Settings goes before Welcome, which is the first with it.
		if l["type"] != "Settings" && l["type"] != "Welcome" && l["request_id"] != id {
			t.Errorf("line without request_id %s: %v", id, l)
		}
	}
}

// TestLatencyHistograms: the strict fake's AgentStartedSpeaking and
// LatencyReport of each turn land in dgrelay_deepgram_latency_seconds.
func TestLatencyHistograms(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.agentSession("service=agent")
	for i := 0; i < 2; i++ {
		write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"hi"}`))
		readUntil(t, c, "LatencyReport")
	}
	body := scrapeHandler(t, h)
	for _, want := range []string{
		// The fake's figures (turn.go): two turns each.
		`dgrelay_deepgram_latency_seconds_sum{report="agent_started_speaking",stage="total"} 1`,
		`dgrelay_deepgram_latency_seconds_sum{report="agent_started_speaking",stage="ttt"} 0.6`,
		`dgrelay_deepgram_latency_seconds_sum{report="agent_started_speaking",stage="tts"} 0.4`,
		`dgrelay_deepgram_latency_seconds_count{report="latency_report",stage="total"} 2`,
		`dgrelay_deepgram_latency_seconds_sum{report="latency_report",stage="ttt_token"} 0.5`,
		`dgrelay_deepgram_latency_seconds_sum{report="latency_report",stage="ttt_text"} 0.6`,
		`dgrelay_deepgram_latency_seconds_sum{report="latency_report",stage="tts"} 0.4`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// Stages the fake does not report are not invented.
	if strings.Contains(body, `stage="stt"`) || strings.Contains(body, `stage="ttt_tool"`) {
		t.Errorf("a stage the fake never reported:\n%s", grepLines(body, "deepgram_latency"))
	}
	if !strings.Contains(body, "dgrelay_upstream_text_seconds_count ") || strings.Contains(body, "dgrelay_upstream_text_seconds_count 0") {
		t.Errorf("the relay's own time per text message is not recorded:\n%s", grepLines(body, "upstream_text"))
	}
	// A report with values that are no latency is ignored.
	h.fake.Tell([]byte(`{"type":"LatencyReport","total_latency":-1,"tts_latency":"x","stt_latency":1e9}`))
	readUntil(t, c, "LatencyReport")
	if body := scrapeHandler(t, h); !strings.Contains(body, `dgrelay_deepgram_latency_seconds_count{report="latency_report",stage="total"} 2`) || strings.Contains(body, `stage="stt"`) {
		t.Errorf("a report out of bounds was counted:\n%s", grepLines(body, "deepgram_latency"))
	}
}

// TestConversationLog: with CONVERSATION_LOG=on every text message, both
// ways, is one line with session, request_id, identity, direction and type;
// audio is not logged; the key and the client's credentials are not either.
func TestConversationLog(t *testing.T) {
	h := newHarness(t, map[string]string{"CONVERSATION_LOG": "on"}, fakedeepgram.Options{})
	converse(t, h)
	h.settled()
	logs := h.logs.String()
	lines := logLines(t, logs, "conversation message")
	var up, down []string
	for _, l := range lines {
		for _, k := range []string{"session", "identity", "direction", "type"} {
			if s, _ := l[k].(string); s == "" {
				t.Errorf("line without %s: %v", k, l)
			}
		}
		switch l["direction"] {
		case "up":
			up = append(up, l["type"].(string))
		case "down":
			down = append(down, l["type"].(string))
		}
	}
	if got := strings.Join(up, ","); got != "Settings,InjectUserMessage,InjectUserMessage" {
		t.Errorf("client messages logged: %s", got)
	}
	for _, want := range []string{"Welcome", "SettingsApplied", "ConversationText", "History", "AgentThinking", "AgentStartedSpeaking",
		"AgentAudioDone", "LatencyReport", "FunctionCallRequest", "FunctionCallResponse", "Error"} {
		if !strings.Contains(","+strings.Join(down, ",")+",", ","+want+",") {
			t.Errorf("no down line of type %s in %v", want, down)
		}
	}
	// Audio: the fake sent ReplyFrames binary messages a turn; none is a line.
	if n := len(up) + len(down); n != len(lines) {
		t.Errorf("%d lines, %d of them text", len(lines), n)
	}
	for _, secret := range []string{"sk-client-LLM-secret", "fn-client-secret", testAPIKey} {
		if strings.Contains(logs, secret) {
			t.Errorf("the logs hold %s", secret)
		}
	}
	var settings map[string]any
	for _, l := range lines {
		if l["type"] == "Settings" {
			settings = l["body"].(map[string]any)
		}
	}
	think := settings["agent"].(map[string]any)["think"].(map[string]any)
	if think["endpoint"].(map[string]any)["headers"] != "[redacted]" || think["endpoint"].(map[string]any)["url"] != "https://llm.example.com" {
		t.Errorf("Settings logged as %v", settings)
	}
	if !strings.Contains(logs, `it said [redacted]`) {
		t.Error("the Error quoting the key was not logged scrubbed")
	}
}

// TestConversationLogOff: off, nothing of the conversation is logged, and
// the client's text is not read (no filter).
func TestConversationLogOff(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	converse(t, h)
	h.settled()
	if n := len(logLines(t, h.logs.String(), "conversation message")); n != 0 {
		t.Errorf("%d conversation lines with the log off", n)
	}
}

// receiver is a real HTTP server that takes webhook deliveries: it answers
// each with the next status of statuses (200 once they run out) and keeps
// what it received.
type receiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	statuses []int
	got      []receivedPost
	hold     chan struct{} // when set, each request waits on it
}

// receivedPost is one POST the receiver took.
type receivedPost struct {
	header http.Header
	body   []byte
	status int
}

func newReceiver(t *testing.T, statuses ...int) *receiver {
	r := &receiver{statuses: statuses}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.hold != nil {
			select {
			case <-r.hold:
			case <-req.Context().Done():
				return
			}
		}
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		status := http.StatusOK
		if len(r.statuses) > 0 {
			status, r.statuses = r.statuses[0], r.statuses[1:]
		}
		r.got = append(r.got, receivedPost{req.Header.Clone(), body, status})
		r.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) deliveries() []receivedPost {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]receivedPost(nil), r.got...)
}

// verifySignature checks a delivery's Dgrelay-Signature as
// docs/conversation-records.md tells receivers to.
func verifySignature(t *testing.T, d receivedPost, secret string) {
	t.Helper()
	h := d.header.Get("Dgrelay-Signature")
	var ts, v1 string
	for _, part := range strings.Split(h, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(unix, 0)).Abs() > time.Minute {
		t.Fatalf("signature time %q", ts)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "." + string(d.body)))
	got, _ := hex.DecodeString(v1)
	if !hmac.Equal(got, mac.Sum(nil)) {
		t.Fatalf("signature %q does not verify", h)
	}
}

func webhookEnv(r *receiver) map[string]string {
	return map[string]string{"CONVERSATION_WEBHOOK": r.srv.URL + "/hooks/dgrelay?token=receiver-own", "CONVERSATION_WEBHOOK_SECRET": testWebhookSecret}
}

// TestWebhookRecord: a session's end sends one signed record, with the
// summary and the transcript, scrubbed, to a real HTTP server.
func TestWebhookRecord(t *testing.T) {
	r := newReceiver(t)
	h := newHarness(t, webhookEnv(r), fakedeepgram.Options{})
	id := converse(t, h)
	waitFor(t, func() bool { return len(r.deliveries()) == 1 })
	d := r.deliveries()[0]
	verifySignature(t, d, testWebhookSecret)
	if d.header.Get("Content-Type") != "application/json" || d.header.Get("Dgrelay-Delivery") == "" {
		t.Errorf("headers %v", d.header)
	}
	var rec sessionRecord
	if err := json.Unmarshal(d.body, &rec); err != nil {
		t.Fatal(err)
	}
	end := sessionEnd(t, h.logs.String())
	if rec.SessionID != end["session"] || rec.SessionID != d.header.Get("Dgrelay-Delivery") || rec.RequestID != id ||
		len(rec.RequestIDs) != 1 || rec.RequestIDs[0] != id || rec.Identity == "" {
		t.Errorf("record ids %+v, end line %v", rec, end)
	}
	if rec.Turns != 2 || rec.FunctionCalls != 1 || strings.Join(rec.ErrorCodes, ",") != "TEST_FAILURE" {
		t.Errorf("summary: turns %d, calls %d, errors %v", rec.Turns, rec.FunctionCalls, rec.ErrorCodes)
	}
	if rec.Ending != (recordEnding{"closed", "client", 1000, 1000}) || rec.BytesUp < int64(len(conversationSettings)+640) || rec.BytesDown < 5*fakedeepgram.ReplyFrameBytes {
		t.Errorf("ending %+v, bytes up %d down %d", rec.Ending, rec.BytesUp, rec.BytesDown)
	}
	if time.Since(rec.Start) > time.Minute || rec.DurationMS <= 0 {
		t.Errorf("start %v, duration %d ms", rec.Start, rec.DurationMS)
	}
	var lines []string
	for _, e := range rec.Transcript {
		if e.Content != nil {
			lines = append(lines, e.Role+": "+*e.Content)
		}
		for _, c := range e.FunctionCalls {
			lines = append(lines, "call "+c.Name+" -> "+c.Response)
		}
	}
	want := "user: hello there|assistant: You said: hello there|user: call lookup|call lookup -> fake result of lookup|assistant: The lookup function said: fake result of lookup"
	if got := strings.Join(lines, "|"); got != want {
		t.Errorf("transcript\n%s\nwant\n%s", got, want)
	}
	for _, secret := range []string{testAPIKey, testWebhookSecret, "sk-client-LLM-secret"} {
		if strings.Contains(string(d.body), secret) {
			t.Errorf("the record holds %s", secret)
		}
	}
	// Counted once the receiver's answer is read, a moment after it took it.
	waitFor(t, func() bool {
		return strings.Contains(scrapeHandler(t, h), "dgrelay_conversation_webhook_delivered_total 1")
	})
	if strings.Contains(h.logs.String(), "receiver-own") {
		t.Error("the webhook's URL, with its token, is in the logs")
	}
}

// shortBackoff makes the webhook retry within milliseconds for a test.
func shortBackoff(t *testing.T, retryFor time.Duration) {
	b, f, a := webhookBackoff, webhookRetryFor, webhookAttemptTimeout
	webhookBackoff, webhookRetryFor, webhookAttemptTimeout = []time.Duration{10 * time.Millisecond, 20 * time.Millisecond}, retryFor, 2*time.Second
	t.Cleanup(func() { webhookBackoff, webhookRetryFor, webhookAttemptTimeout = b, f, a })
}

// TestWebhookRetries: a receiver that fails (503, then a 500) and then takes
// the record gets it, signed afresh each try; one that refuses it (400) is
// not asked again; one that keeps failing is given up after the retry time.
func TestWebhookRetries(t *testing.T) {
	shortBackoff(t, 500*time.Millisecond)
	r := newReceiver(t, 503, 500)
	h := newHarness(t, webhookEnv(r), fakedeepgram.Options{})
	c := h.agentSession("service=agent")
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool { return len(r.deliveries()) == 3 })
	ds := r.deliveries()
	for i, d := range ds {
		verifySignature(t, d, testWebhookSecret)
		if string(d.body) != string(ds[0].body) || d.header.Get("Dgrelay-Delivery") != ds[0].header.Get("Dgrelay-Delivery") {
			t.Errorf("try %d differs from the first", i)
		}
	}
	waitFor(t, func() bool {
		body := scrapeHandler(t, h)
		return strings.Contains(body, "dgrelay_conversation_webhook_delivered_total 1") && strings.Contains(body, "dgrelay_conversation_webhook_retries_total 2")
	})

	r.mu.Lock()
	r.statuses = []int{400}
	r.mu.Unlock()
	h.agentSession("service=agent").Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool {
		return strings.Contains(scrapeHandler(t, h), `dgrelay_conversation_webhook_dropped_total{reason="rejected"} 1`)
	})

	r.mu.Lock()
	r.statuses = []int{500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500}
	r.mu.Unlock()
	h.agentSession("service=agent").Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool {
		return strings.Contains(scrapeHandler(t, h), `dgrelay_conversation_webhook_dropped_total{reason="gave_up"} 1`)
	})
	if n := len(r.deliveries()); n < 3+1+5 || n > 3+1+40 {
		t.Errorf("%d tries in all", n)
	}
	waitForLog(t, h.logs, `"reason":"gave_up"`)
}

// TestConversationLogTextRate: with the log on and no policy, a user's text
// is bounded as under a policy: past a burst of one message and
// clientTextRate, the session ends (1008) instead of filling the log store.
func TestConversationLogTextRate(t *testing.T) {
	h := newHarness(t, map[string]string{"CONVERSATION_LOG": "on", "MAX_MESSAGE_BYTES": "60000"}, fakedeepgram.Options{})
	c := h.agentSession("service=agent")
	msg := []byte(`{"type":"InjectAgentMessage","message":"` + strings.Repeat("x", 9000) + `"}`)
	for i := 0; i < 12; i++ { // 108 kB at once: past the 60 kB burst
		if err := c.Write(context.Background(), websocket.MessageText, msg); err != nil {
			break
		}
	}
	if ce := expectClose(t, c, websocket.StatusPolicyViolation); ce.Reason != "too much text" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if n := strings.Count(h.logs.String(), `"direction":"up","type":"InjectAgentMessage"`); n == 0 || n > 7 {
		t.Errorf("%d lines logged past the bound", n)
	}
}

// TestRequestIDsAcrossAMove: a call carried to a new Deepgram connection
// (continuation.go) has one request_id per connection: the lines after the
// move carry the new one, the end line and the record list both, and the
// record's transcript holds the turns of both connections.
func TestRequestIDsAcrossAMove(t *testing.T) {
	r := newReceiver(t)
	h := newHarness(t, webhookEnv(r), fakedeepgram.Options{})
	c := startCall(t, h, minimalSettings)
	say(t, c, "before")
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
	untilContinued(t, c)
	say(t, c, "after")
	c.Close(websocket.StatusNormalClosure, "")
	h.settled()
	hs := h.fake.Handshakes()
	if len(hs) != 2 {
		t.Fatalf("%d connections to Deepgram", len(hs))
	}
	end := sessionEnd(t, h.logs.String())
	ids, _ := end["request_ids"].([]any)
	if len(ids) != 2 || end["request_id"] != ids[1] || ids[0] == ids[1] {
		t.Fatalf("end line request_id %v, request_ids %v", end["request_id"], end["request_ids"])
	}
	waitFor(t, func() bool { return len(r.deliveries()) == 1 })
	var rec sessionRecord
	if err := json.Unmarshal(r.deliveries()[0].body, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.RequestIDs) != 2 || rec.RequestIDs[0] != ids[0] || rec.RequestIDs[1] != ids[1] || rec.RequestID != ids[1] {
		t.Errorf("record request ids %q %q, end line %v", rec.RequestID, rec.RequestIDs, ids)
	}
	var said []string
	for _, e := range rec.Transcript {
		if e.Content != nil && e.Role == "user" {
			said = append(said, *e.Content)
		}
	}
	if strings.Join(said, ",") != "before,after" {
		t.Errorf("the user said %v in the record", said)
	}
	if starts := logLines(t, h.logs.String(), "session start"); len(starts) != 1 {
		t.Errorf("%d start lines for one call", len(starts))
	}
}

// TestRequestIDNeverCarriesTheKey: a request id that holds a secret (an
// upstream that sent the key as its Welcome's request_id) goes into no log
// attribute: log attributes are not scrubbed one by one. The harness fails
// any test whose logs hold the key.
func TestRequestIDNeverCarriesTheKey(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	c := h.agentSession("")
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Tell","message":{"type":"Welcome","request_id":"`+testAPIKey+`"}}`))
	readUntil(t, c, "Welcome")
	write(t, c, websocket.MessageText, []byte(`{"type":"InjectUserMessage","content":"hello"}`))
	readUntil(t, c, "AgentAudioDone")
	c.Close(websocket.StatusNormalClosure, "")
	h.settled()
	waitForLog(t, h.logs, `"message":"session end"`)
}

// FuzzCutEscaped: a logged text, cut, stays within its bound once JSON
// escapes it, whatever bytes it holds (control bytes grow sixfold).
func FuzzCutEscaped(f *testing.F) {
	f.Add(strings.Repeat("\x01", 70000), 65536)
	f.Add(strings.Repeat("a", 70000), 65536)
	f.Add(strings.Repeat("<\"\u2028é", 20000), 1000)
	f.Add("", 10)
	f.Fuzz(func(t *testing.T, s string, limit int) {
		if limit < 8 || limit > 1<<20 {
			return
		}
		s = strings.ToValidUTF8(s, "\uFFFD")
		cut := cutEscaped(s, limit)
		b, _ := json.Marshal(cut)
		if len(b)-2 > limit {
			t.Fatalf("cut to %d bytes, escaped %d, limit %d", len(cut), len(b)-2, limit)
		}
		if len(s) <= limit/6 && cut != s {
			t.Fatalf("a short text was cut")
		}
	})
}
