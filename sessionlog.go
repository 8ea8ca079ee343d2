package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"

	"dgrelay/internal/message"
	"dgrelay/internal/scrub"
	"dgrelay/internal/wspipe"
)

// conversationLogBytes bounds the message a CONVERSATION_LOG line carries:
// Cloud Logging takes entries up to 256 KiB, and a longer message (a
// Settings with a long prompt) is cut, marked, with its full size beside.
const conversationLogBytes = 64 << 10

// The direction of a logged message, as the traffic metrics name it.
const (
	directionUp   = "up"   // client to Deepgram
	directionDown = "down" // Deepgram to client
)

// logMessage writes CONVERSATION_LOG's line for one text message of an
// agent session: its session, request_id (from the logger), identity hash,
// direction, type and the message itself. msg is what went on: Deepgram's
// scrubbed already, the client's as Deepgram got it (after the policy);
// both are scrubbed of the relay's secrets here, and the client's of the
// secrets clients put in Settings (credentialKeys). Audio never comes here.
func (s *session) logMessage(direction string, msg []byte) {
	body := s.tools.scrub.Text(msg)
	var unread string
	if direction == directionUp {
		body, unread = withoutCredentials(body)
	}
	attrs := []any{"session", s.id, "identity", s.identityKey, "direction", direction,
		"type", s.tools.scrub.CleanTo(string(message.Type(msg)), 64), "bytes", len(msg)}
	switch {
	case unread != "":
		attrs = append(attrs, "body_unread", unread)
	case len(body) <= conversationLogBytes && json.Valid(body):
		attrs = append(attrs, "body", json.RawMessage(body))
	default:
		// Too long, or not JSON: the text, cut at a rune boundary.
		text := strings.ToValidUTF8(string(body), "\uFFFD")
		cut := cutEscaped(text, conversationLogBytes)
		attrs = append(attrs, "body_text", cut, "truncated", len(cut) < len(text))
	}
	s.log().Info("conversation message", attrs...)
}

// credentialKeys are the keys whose values a client's message may hold
// another provider's secrets under, at any depth: an endpoint's headers
// (think, speak, each function) and a provider's credentials (DESIGN §3;
// AsyncAPI spec, Settings). CONVERSATION_LOG writes their values as
// scrub.RedactedMark.
var credentialKeys = map[string]bool{"headers": true, "credentials": true}

// withoutCredentials is a client's message with credentialKeys' values
// redacted, read with the relay's bounded parser (as the policy reads it,
// so that an escaped key is read as Deepgram reads it). A message that
// parser refuses is not logged: unread says why.
func withoutCredentials(msg []byte) (out []byte, unread string) {
	if !mayHoldCredentials(msg) {
		// Most client messages (KeepAlive, audio's text companions) name
		// no such key: no parse.
		return msg, ""
	}
	m, _, err := message.Parse(msg)
	if err != nil {
		return nil, err.Error()
	}
	if !redactCredentials(m) {
		return msg, ""
	}
	out, err = message.Encode(m)
	if err != nil {
		return nil, "could not be encoded"
	}
	return out, ""
}

// mayHoldCredentials: msg names a credentialKeys key, in any case, or has
// an escape that could spell one.
func mayHoldCredentials(msg []byte) bool {
	return bytes.IndexByte(msg, '\\') >= 0 || containsFold(msg, "headers") || containsFold(msg, "credentials")
}

// containsFold: b holds word (lower-case ASCII) in any case.
func containsFold(b []byte, word string) bool {
	for i := 0; i+len(word) <= len(b); i++ {
		j := 0
		for j < len(word) && b[i+j]|0x20 == word[j] {
			j++
		}
		if j == len(word) {
			return true
		}
	}
	return false
}

// redactCredentials redacts credentialKeys' values in v, in place, and
// reports whether it found any.
func redactCredentials(v any) bool {
	found := false
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if credentialKeys[strings.ToLower(k)] {
				v[k] = scrub.RedactedMark
				found = true
				continue
			}
			found = redactCredentials(x) || found
		}
	case []any:
		for _, x := range v {
			found = redactCredentials(x) || found
		}
	}
	return found
}

// loggedClientText is the client's text filter with CONVERSATION_LOG=on:
// inner's verdict (the policy's, the usage tag's, or none), then a log line
// for what goes on to Deepgram. Inner is asked no more once it says Last;
// this filter never does, since every message is logged. Without a policy
// (which bounds it already) the user's text is bounded as a policy bounds
// it, clientTextRate after a burst of one message: the log's lines, and
// what they cost in the operator's log store, are the client's to make.
func (s *session) loggedClientText(inner wspipe.TextFilter) wspipe.TextFilter {
	innerDone := inner == nil
	return func(msg []byte) wspipe.Verdict {
		if s.tools.policy == nil && !s.textRate.AllowN(time.Now(), len(msg)) {
			s.end(endTextRate.outcome(""))
			return wspipe.Verdict{Drop: true}
		}
		v := wspipe.Verdict{Out: msg}
		if !innerDone {
			v = inner(msg)
			innerDone, v.Last = v.Last, false
		}
		if v.Refused == "" && !v.Drop {
			s.logMessage(directionUp, v.Out)
		}
		return v
	}
}

// logsConversation: the session's messages are logged (CONVERSATION_LOG=on,
// an agent session).
func (s *session) logsConversation() bool {
	return s.tools.records.logMessages && s.service == "agent"
}

// cutEscaped cuts s, at a rune boundary and marked, so that it stays within
// limit bytes once JSON escapes it: the log line holds it escaped, and a
// text of control bytes grows sixfold in escaping (Cloud Logging refuses an
// entry over 256 KiB).
func cutEscaped(s string, limit int) string {
	const mark = "…"
	size := 0
	for i, r := range s {
		n := utf8.RuneLen(r)
		switch {
		case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t':
			n = 2
		case r < 0x20 || r == '<' || r == '>' || r == '&' || r == '\u2028' || r == '\u2029':
			n = 6
		}
		if size+n > limit-len(mark) {
			return s[:i] + mark
		}
		size += n
	}
	return s
}
