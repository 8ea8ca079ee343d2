package main

import (
	"net/url"
	"strings"
)

// USAGE_TAG=user: every session carries a tag naming its user at Deepgram,
// so that Deepgram's usage reports break down by user. The tag is the user's
// hashed identity (identityKey), as in Redis: never a sub or an IP. It goes in
// the agent's Settings (tags) and in transcription's query (tag).

// usageTagPrefix begins the relay's tags. A client's own tag with it is
// dropped: a client must not name another user.
const usageTagPrefix = "dgrelay-user-"

// usageTagOf is the tag of an identity's sessions under USAGE_TAG=mode, or
// "" when it is off.
func usageTagOf(mode, identityKey string) string {
	if mode != usageTagUser {
		return ""
	}
	return usageTagPrefix + identityKey
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
