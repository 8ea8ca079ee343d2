package fakedeepgram

import (
	"context"
	"encoding/json"
	"time"

	"github.com/coder/websocket"
)

// Listen's close codes and reasons (docs: listen streaming and audio
// keep-alive: no JSON error messages, the close frame says what happened).
const (
	// ListenBadData closes a session over a message that is not audio or
	// a known control message: 1008 DATA-0000.
	ListenBadData = websocket.StatusPolicyViolation
	// ListenTimeout closes a session that got neither audio nor KeepAlive
	// for the timeout (10 s): 1011 NET-0001.
	ListenTimeout = websocket.StatusInternalError
)

// listenV1 runs a /v1/listen session (AsyncAPI spec, channel /v1/listen):
// nothing on connect; a Results (interim) for each audio message; Finalize,
// a final Results from_finalize; CloseStream, Metadata and a normal close;
// KeepAlive, nothing; anything else, a close 1008 DATA-0000; quiet for
// ClientTimeout, a close 1011 NET-0001.
func (ss *session) listenV1() Closed {
	ss.begin()
	defer ss.finish()
	c, opts := ss.c, ss.opts
	ss.timers(func() { ss.closeWith(ListenTimeout, "NET-0001", nil) }, 0, nil, 0, nil)
	var heard float64 // seconds of audio, read as linear16 16 kHz mono
	for {
		typ, data, err := c.Read(context.Background())
		if err != nil {
			return ss.ended(err)
		}
		ss.touch()
		if typ == websocket.MessageBinary {
			if opts.EchoAudio {
				err = c.Write(context.Background(), websocket.MessageBinary, data)
			} else {
				d := float64(len(data)) / 32000
				err = ss.send(ss.results(heard, d, false))
				heard += d
			}
			if err != nil {
				return ss.ended(err)
			}
			continue
		}
		ss.s.record(data)
		if end, ok := ss.control(data); ok {
			if end != nil {
				return *end
			}
			continue
		}
		var msg struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(data, &msg)
		switch msg.Type {
		case "KeepAlive":
		case "Finalize":
			err = ss.send(ss.results(heard, 0, true))
		case "CloseStream":
			// AsyncAPI spec, ListenV1Metadata: all fields required.
			_ = ss.send(map[string]any{"type": "Metadata", "transaction_key": "deprecated", "request_id": ss.id,
				"sha256": "", "created": ss.start.UTC().Format(time.RFC3339), "duration": heard, "channels": 1})
			return ss.closeWith(websocket.StatusNormalClosure, "", nil)
		default:
			return ss.closeWith(ListenBadData, "DATA-0000", nil)
		}
		if err != nil {
			return ss.ended(err)
		}
	}
}

// results is a Results message (AsyncAPI spec, ListenV1Results) with an
// empty transcript: the fake hears nothing.
func (ss *session) results(start, duration float64, finalize bool) map[string]any {
	m := map[string]any{
		"type": "Results", "channel_index": []int{0, 1}, "duration": duration, "start": start,
		"is_final": finalize, "speech_final": finalize,
		"channel": map[string]any{"alternatives": []map[string]any{{"transcript": "", "confidence": 0, "words": []any{}}}},
		"metadata": map[string]any{"request_id": ss.id, "model_uuid": "00000000-0000-0000-0000-000000000000",
			"model_info": map[string]string{"name": "fake", "version": "0", "arch": "fake"}},
	}
	if finalize {
		m["from_finalize"] = true
	}
	return m
}

// listenV2 runs a Flux /v2/listen session, lightly (AsyncAPI spec, channel
// /v2/listen): Connected on connect; a TurnInfo Update for each audio
// message; Configure, ConfigureSuccess with what it set; ForceEndTurn, an
// EndOfTurn TurnInfo (docs: flux force-end-turn); CloseStream, a normal
// close. Every server message carries the next sequence_id. Flux publishes
// a fatal Error message but no codes for a bad client message or for
// silence: the fake answers both as /v1/listen does.
func (ss *session) listenV2() Closed {
	ss.begin()
	defer ss.finish()
	c := ss.c
	seq := 0
	sendSeq := func(m map[string]any) error {
		m["request_id"], m["sequence_id"] = ss.id, seq
		seq++
		return ss.send(m)
	}
	if err := sendSeq(map[string]any{"type": "Connected"}); err != nil {
		return closedBy(err)
	}
	ss.timers(func() { ss.closeWith(ListenTimeout, "NET-0001", nil) }, 0, nil, 0, nil)
	var heard float64
	turnInfo := func(event string) map[string]any {
		return map[string]any{"type": "TurnInfo", "event": event, "turn_index": 0, "audio_window_start": 0.0,
			"audio_window_end": heard, "transcript": "", "words": []any{}, "end_of_turn_confidence": 0.0}
	}
	for {
		typ, data, err := c.Read(context.Background())
		if err != nil {
			return ss.ended(err)
		}
		ss.touch()
		if typ == websocket.MessageBinary {
			heard += float64(len(data)) / 32000
			if err := sendSeq(turnInfo("Update")); err != nil {
				return ss.ended(err)
			}
			continue
		}
		ss.s.record(data)
		if end, ok := ss.control(data); ok {
			if end != nil {
				return *end
			}
			continue
		}
		var msg struct {
			Type       string          `json:"type"`
			Thresholds json.RawMessage `json:"thresholds"`
			Keyterms   []string        `json:"keyterms"`
		}
		_ = json.Unmarshal(data, &msg)
		switch msg.Type {
		case "Configure":
			thresholds := map[string]any{}
			_ = json.Unmarshal(msg.Thresholds, &thresholds)
			if msg.Keyterms == nil {
				msg.Keyterms = []string{}
			}
			err = sendSeq(map[string]any{"type": "ConfigureSuccess", "thresholds": thresholds, "keyterms": msg.Keyterms})
		case "ForceEndTurn":
			err = sendSeq(turnInfo("EndOfTurn"))
		case "CloseStream":
			return ss.closeWith(websocket.StatusNormalClosure, "", nil)
		default:
			return ss.closeWith(ListenBadData, "DATA-0000", nil)
		}
		if err != nil {
			return ss.ended(err)
		}
	}
}
