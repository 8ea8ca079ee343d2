package main

import (
	"time"

	"dgrelay/internal/message"
	"dgrelay/internal/wspipe"
)

// upstreamText is the filter of Deepgram's text messages on their way to the
// client. Each is scrubbed of the key and the policy's secrets before the
// client reads it. In an agent session the kind of each is read too (once,
// without a copy: message.Type) and given to heard, since the session follows
// the conversation Deepgram reports: its record, its latencies, its speech.
// Binary messages (audio) never come here.
func (s *session) upstreamText(msg []byte) wspipe.Verdict {
	start := time.Now()
	out := s.tools.scrub.Text(msg)
	drop := false
	if s.service == "agent" {
		kind := message.Type(msg)
		// A warning or Error the relay answers by moving the session
		// (continuation.go) is not the client's: its call goes on.
		drop = s.cont != nil && s.cont.followUpstream(kind, msg, s.wakeUpstreamReader)
		s.heard(kind, msg)
		if s.tools.records.logMessages {
			s.logMessage(directionDown, out)
		}
	}
	s.tools.records.metrics.textTime.Observe(time.Since(start).Seconds())
	if drop {
		return wspipe.Verdict{Drop: true}
	}
	return wspipe.Verdict{Out: out}
}

// heard is where an agent session acts on one of Deepgram's text messages,
// read whole, by its kind (nil when message.Type could not be sure of one).
// Only the pipe from Deepgram calls it, one message at a time.
func (s *session) heard(kind, msg []byte) {
	switch string(kind) {
	case "Welcome":
		s.welcomed(msg)
	case "UserStartedSpeaking":
		s.conversation.spokeNow()
	case "AgentStartedSpeaking":
		s.conversation.spokeNow()
		s.latencies("AgentStartedSpeaking", msg)
	case "LatencyReport":
		s.latencies("LatencyReport", msg)
	case "ConversationText":
		s.conversation.conversationText(msg)
		s.recorded("ConversationText", msg)
	case "History":
		s.conversation.historyMessage(msg)
		s.recorded("History", msg)
	case "FunctionCallRequest":
		s.conversation.callRequested(msg)
		s.recorded("FunctionCallRequest", msg)
	case "Error":
		s.recorded("Error", msg)
	}
}
