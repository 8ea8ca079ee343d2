package main

import (
	"time"

	"dgrelay/internal/message"
	"dgrelay/internal/wspipe"
)

// policyFilter applies the Settings policy to a client text message and logs
// what it stripped: paths only, never values.
// Only the client's pipe calls it, so its count needs no lock.
func (s *session) policyFilter(msg []byte) wspipe.Verdict {
	if !s.textRate.AllowN(time.Now(), len(msg)) {
		// Parsing is the one per-message cost a client can make large
		// (a megabyte of small values costs some 35 times a megabyte of
		// audio): past its rate the session ends.
		s.end(endTextRate.outcome(""))
		return wspipe.Verdict{Drop: true}
	}
	v := s.tools.policy.Check(msg, s.service)
	if len(v.Stripped) > 0 {
		s.tools.metrics.policyViolations.WithLabelValues("strip").Add(float64(len(v.Stripped)))
		switch s.strippedLines++; {
		case s.strippedLines <= maxStrippedLines:
			s.log().Info("settings policy: stripped", "session", s.id, "user", s.user,
				"paths", loggedPaths(v.Stripped, s.tools.redact), "paths_total", len(v.Stripped))
		case s.strippedLines == maxStrippedLines+1:
			s.log().Info("settings policy: stripped, and more this session; the metric counts them",
				"session", s.id, "user", s.user)
		}
	}
	if s.usageTag != "" && v.Settings != nil && !v.Drop && v.Refused == "" {
		// After the policy: its set may pin tags, the relay's goes too.
		addUsageTag(v.Settings, s.usageTag)
		if out, err := message.Encode(v.Settings); err == nil {
			v.Out = out
		}
	}
	return wspipe.Verdict{Out: v.Out, Drop: v.Drop, Refused: v.Refused}
}

// tagFirstSettings is the client's text filter with USAGE_TAG=user and no
// Settings policy: it reads the first text message only, which clients send
// as the Settings, tags it, and asks for no more (every later message goes
// on unread). A first message that is not one JSON object with a string
// type, read one way only (as a policy reads, so that duplicate keys
// cannot hide a tags list from the relay and show it to Deepgram), is
// refused: SETTINGS_REFUSED. So is one that is not the Settings: passed
// on, it would leave the Settings after it unread, untagged and free to
// carry a tag of the relay's kind (Deepgram refuses such a session anyway:
// NON_SETTINGS_MESSAGE_BEFORE_SETTINGS).
func (s *session) tagFirstSettings(msg []byte) wspipe.Verdict {
	m, typ, err := message.Parse(msg)
	if err != nil {
		return wspipe.Verdict{Refused: "message refused: " + err.Error(), Last: true}
	}
	if typ != "Settings" {
		return wspipe.Verdict{Refused: "message refused: the first message must be Settings", Last: true}
	}
	addUsageTag(m, s.usageTag)
	out, err := message.Encode(m)
	if err != nil {
		// Only values the decoder made are in m: this cannot happen.
		return wspipe.Verdict{Refused: "message could not be encoded", Last: true}
	}
	return wspipe.Verdict{Out: out, Last: true}
}

// clientText is the client's text filter in a session that may move: the
// policy's, or USAGE_TAG's for the first Settings, then the record.
// Only the client's pipe calls it.
func (s *session) clientText(msg []byte) wspipe.Verdict {
	var v wspipe.Verdict
	switch {
	case s.tools.policy != nil:
		v = s.policyFilter(msg)
	case s.usageTag != "" && !s.cont.tagged:
		v = s.tagFirstSettings(msg)
		// The record reads on where the tag alone would not.
		s.cont.tagged, v.Last = true, false
	default:
		v = wspipe.Verdict{Out: msg}
	}
	if !v.Drop && v.Refused == "" {
		s.cont.followClient(v.Out)
	}
	return v
}
