package main

import (
	"encoding/json"
	"time"

	"github.com/coder/websocket"
)

// welcomed takes Deepgram's Welcome: its request_id is the key of the
// connection at Deepgram (its usage dashboard, its support), and goes into
// every later log line of the session (AsyncAPI spec, AgentV1Welcome:
// request_id, a string, required; docs voice-agent-observability: keep
// every message keyed to it).
func (s *session) welcomed(msg []byte) {
	var w struct {
		RequestID string `json:"request_id"`
	}
	if json.Unmarshal(msg, &w) != nil || !s.tools.requestIDOK(w.RequestID) {
		return
	}
	s.setRequestID(w.RequestID)
}

// setRequestID makes id the session's current request id: its log lines
// carry it from now on, and its record lists it. The first one writes the
// session's start line.
func (s *session) setRequestID(id string) {
	c := &s.notes
	n := len(c.requestIDs)
	if n > 0 && c.requestIDs[n-1] == id {
		return
	}
	if n < maxRequestIDs {
		c.requestIDs = append(c.requestIDs, id)
	}
	c.logger.Store(s.tools.logFor(s.trace).With("request_id", id))
	if n == 0 {
		s.log().Info("session start", "session", s.id, "service", s.service, "dg_request_id", s.dgRequestID,
			"dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries, "user", s.user, "identity", s.identityKey, "remote", s.remote)
	}
}

// movedTo notes the request id of the Deepgram connection a move carried the
// session to (its Welcome's, read by reconnect). Only the pipe from Deepgram
// calls it, as it calls heard.
func (s *session) movedTo(id string) {
	if s.tools.requestIDOK(id) {
		s.setRequestID(id)
	}
}

// requestID is the session's current request id: Welcome's, or before one
// (and for transcription, which has none) the dg-request-id of the dial.
func (s *session) requestID() string {
	if n := len(s.notes.requestIDs); n > 0 {
		return s.notes.requestIDs[n-1]
	}
	return s.dgRequestID
}

// latencyStages are the stages of Deepgram's two latency reports, each a
// field in seconds: LatencyReport (docs voice-agent-latency-report: every
// field optional; AsyncAPI spec, AgentV1LatencyReport) and
// AgentStartedSpeaking (AsyncAPI spec: total, tts and ttt, required). The
// stage names are the fields' without "_latency".
var latencyStages = map[string][]string{
	"LatencyReport":        {"stt", "ttt_token", "ttt_text", "ttt_tool", "ttt_thinking", "tts", "total"},
	"AgentStartedSpeaking": {"ttt", "tts", "total"},
}

// reportLabels are the report label's values, by message type.
var reportLabels = map[string]string{"LatencyReport": "latency_report", "AgentStartedSpeaking": "agent_started_speaking"}

// maxReportedLatency bounds what a histogram takes: a value past it, or
// below zero, is not a latency (JSON has no NaN or infinity).
const maxReportedLatency = 3600

// latencies records one of Deepgram's latency reports in
// dgrelay_deepgram_latency_seconds, each stage it gives.
func (s *session) latencies(kind string, msg []byte) {
	var fields map[string]json.RawMessage
	if json.Unmarshal(msg, &fields) != nil {
		return
	}
	for _, stage := range latencyStages[kind] {
		var v float64
		if raw, ok := fields[stage+"_latency"]; !ok || json.Unmarshal(raw, &v) != nil || v < 0 || v > maxReportedLatency {
			continue
		}
		s.tools.records.metrics.latency.WithLabelValues(reportLabels[kind], stage).Observe(v)
	}
}

// recorded follows the messages a record summarizes, when there is a
// webhook to send it to; without one it costs nothing.
func (s *session) recorded(kind string, msg []byte) {
	if s.tools.records.webhook == nil {
		return
	}
	c := &s.notes
	var dropped int
	switch kind {
	case "ConversationText":
		// AsyncAPI spec, AgentV1ConversationText: role (user or
		// assistant) and content, required.
		var t struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		}
		if json.Unmarshal(msg, &t) != nil {
			return
		}
		if t.Role == "user" {
			c.turns++
		}
		dropped = c.transcript.heardText(t.Role, t.Content)
	case "History":
		dropped = c.transcript.heardHistory(msg)
	case "FunctionCallRequest":
		// AsyncAPI spec, AgentV1FunctionCallRequest: functions, an array.
		var f struct {
			Functions []json.RawMessage `json:"functions"`
		}
		if json.Unmarshal(msg, &f) == nil {
			c.functionCalls += len(f.Functions)
		}
	case "Error":
		// AsyncAPI spec, AgentV1Error: code, a string, required.
		var e struct {
			Code string `json:"code"`
		}
		if json.Unmarshal(msg, &e) == nil {
			c.addErrorCode(e.Code)
		}
	}
	if dropped > 0 {
		s.tools.records.metrics.transcriptDropped.Add(float64(dropped))
	}
}

// sessionRecord is what the webhook receives at a session's end: the
// summary issue 25 lists and the transcript (docs/conversation-records.md).
type sessionRecord struct {
	SessionID  string    `json:"session_id"`
	Identity   string    `json:"identity"`
	UsageTag   string    `json:"usage_tag,omitempty"`
	RequestID  string    `json:"request_id"`
	RequestIDs []string  `json:"request_ids"`
	Start      time.Time `json:"start"`
	DurationMS int64     `json:"duration_ms"`
	Turns      int       `json:"turns"`
	// FunctionCalls counts the calls Deepgram asked for.
	FunctionCalls int `json:"function_calls"`
	// ErrorCodes are Deepgram's Error codes, then the relay's own Error
	// code for the ending when it sent one.
	ErrorCodes        []string          `json:"error_codes"`
	Ending            recordEnding      `json:"ending"`
	BytesUp           int64             `json:"bytes_up"`
	BytesDown         int64             `json:"bytes_down"`
	Transcript        []transcriptEntry `json:"transcript"`
	TranscriptDropped int               `json:"transcript_dropped"`
}

// recordEnding is how the session ended, as its end line says.
type recordEnding struct {
	Cause         string `json:"cause"`
	ClosedBy      string `json:"closed_by"`
	ClientClose   int    `json:"client_close"`
	UpstreamClose int    `json:"upstream_close"`
}

// maxRecordBytes bounds a record: the transcript's bound and the summary's
// bounded lists fit well within it.
const maxRecordBytes = transcriptBytes + 32<<10

// sendRecord hands the ended session's record to the webhook, if there is
// one: built, scrubbed and queued, never waited for.
func (s *session) sendRecord(o outcome, clientClose, upstreamClose int) {
	w := s.tools.records.webhook
	if w == nil || s.service != "agent" {
		return
	}
	body, ok := s.recordBody(o, clientClose, upstreamClose)
	if !ok {
		w.drop(s.id, dropTooBig, 0, "")
		return
	}
	w.send(s.id, s.identityKey, body)
}

// recordBody is the session's record, encoded and scrubbed; ok is false
// when it does not fit maxRecordBytes.
func (s *session) recordBody(o outcome, clientClose, upstreamClose int) (body []byte, ok bool) {
	c := &s.notes
	codes := c.errorCodes
	var relayError struct {
		Code string `json:"code"`
	}
	if o.client.error != nil && json.Unmarshal(o.client.error, &relayError) == nil && relayError.Code != "" {
		codes = append(codes, relayError.Code)
	}
	r := sessionRecord{SessionID: s.id, Identity: s.identityKey, UsageTag: s.usageTag,
		RequestID: s.requestID(), RequestIDs: c.requestIDs, Start: s.started.UTC(),
		DurationMS: time.Since(s.started).Milliseconds(), Turns: c.turns, FunctionCalls: c.functionCalls,
		ErrorCodes: codes, Ending: recordEnding{o.cause, o.closedBy, clientClose, upstreamClose},
		BytesUp: s.up.Bytes.Load(), BytesDown: s.down.Bytes.Load(),
		Transcript: c.transcript.entries, TranscriptDropped: c.transcript.dropped}
	if r.RequestIDs == nil {
		r.RequestIDs = []string{}
	}
	if r.ErrorCodes == nil {
		r.ErrorCodes = []string{}
	}
	if r.Transcript == nil {
		r.Transcript = []transcriptEntry{}
	}
	body, err := json.Marshal(r)
	if err != nil || len(body) > maxRecordBytes {
		return nil, false
	}
	// The key, the policy's secrets and the webhook's own are scrubbed
	// from the whole record, however a message spelled them.
	return s.tools.scrub.Text(body), true
}

// ended records a relayed session in the metrics and its log line.
func (s *session) ended() {
	o := s.result()
	m := s.tools.metrics
	s.flush(m)
	m.sessionsTotal.WithLabelValues(s.service, o.cause).Inc()
	m.sessionDuration.WithLabelValues(s.service).Observe(time.Since(s.started).Seconds())
	// The codes are those written: a close the relay meant to send but
	// could not (a peer gone, a write that timed out) counts as none.
	up, down := &s.up, &s.down
	clientClose, upstreamClose := websocket.StatusCode(down.CloseSent.Load()), websocket.StatusCode(up.CloseSent.Load())
	m.closeCodes.WithLabelValues("client", codeLabel(clientClose)).Inc()
	m.closeCodes.WithLabelValues("upstream", codeLabel(upstreamClose)).Inc()
	var tag []any
	if s.usageTag != "" {
		tag = []any{"usage_tag", s.usageTag}
	}
	if len(s.notes.requestIDs) > 1 {
		tag = append(tag, "request_ids", s.notes.requestIDs)
	}
	s.log().Info("session end", append([]any{
		"session", s.id,
		"service", s.service,
		"duration_ms", time.Since(s.started).Milliseconds(),
		"up_messages", up.Messages.Load(), "up_bytes", up.Bytes.Load(),
		"down_messages", down.Messages.Load(), "down_bytes", down.Bytes.Load(),
		"closed_by", o.closedBy, "cause", o.cause,
		"client_close", int(clientClose), "upstream_close", int(upstreamClose),
		"dg_request_id", s.dgRequestID,
		"dial_ms", s.dialTime.Milliseconds(), "dial_tries", s.dialTries, "moves", s.moves,
		"user", s.user,
		"remote", s.remote}, tag...)...)
	s.sendRecord(o, int(clientClose), int(upstreamClose))
}
