package main

import (
	"net/url"
	"strings"

	"dgrelay/internal/message"
	"dgrelay/internal/wspipe"
)

// USAGE_TAG=user: every session carries a tag naming its user at Deepgram,
// so that Deepgram's usage reports break down by user. The tag is the user's
// hashed identity (userKey), as in Redis: never a sub or an IP. It goes in
// the agent's Settings (tags) and in transcription's query (tag).

// usageTagPrefix begins the relay's tags. A client's own tag with it is
// dropped: a client must not name another user.
const usageTagPrefix = "dgrelay-user-"

// usageTagFor is the tag of a user's sessions, or "" when USAGE_TAG is off.
func (rl *relay) usageTagFor(userKey string) string {
	if rl.cfg.UsageTag != usageTagUser {
		return ""
	}
	return usageTagPrefix + userKey
}

// taggedQuery is the query forwarded to transcription with the user's tag
// added, and any client tag of the relay's kind dropped. The route has
// checked that every part unescapes.
func taggedQuery(forwarded, tag string) string {
	var kept []string
	for part := range strings.SplitSeq(forwarded, "&") {
		rawKey, rawValue, _ := strings.Cut(part, "=")
		key, _ := url.QueryUnescape(rawKey)
		value, _ := url.QueryUnescape(rawValue)
		if part == "" || key == "tag" && strings.HasPrefix(value, usageTagPrefix) {
			continue
		}
		kept = append(kept, part)
	}
	return strings.Join(append(kept, "tag="+url.QueryEscape(tag)), "&")
}

// addUsageTag puts tag in a Settings message's tags: the client's own tags
// stay, but for any of the relay's kind; tags that are not a list become
// the one tag.
func addUsageTag(settings map[string]any, tag string) {
	var tags []any
	if list, ok := settings["tags"].([]any); ok {
		for _, t := range list {
			if s, ok := t.(string); ok && strings.HasPrefix(s, usageTagPrefix) {
				continue
			}
			tags = append(tags, t)
		}
	}
	settings["tags"] = append(tags, tag)
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
