package policy

import (
	"slices"
	"strconv"
	"strings"

	"dgrelay/internal/message"
)

// Verdict is what the policy makes of one client text message.
type Verdict struct {
	Out      []byte   // what goes upstream (the message itself when untouched)
	Drop     bool     // send nothing (a stripped Update, or a malformed message under strip)
	Refused  string   // non-empty: refuse the session; what the client is told
	Stripped []string // paths removed, for the log
	// Settings is a Settings message as it goes (Out, parsed), for the
	// usage tag; nil for any other message.
	Settings map[string]any
}

// violation is the verdict on one message that breaks the policy: refused,
// or dropped with what to log.
func (p *Policy) violation(why, logged string) Verdict {
	if p.refuse {
		return Verdict{Refused: why}
	}
	return Verdict{Drop: true, Stripped: []string{logged}}
}

// Check applies the policy to one client text message of a service (agent
// or transcription). Every message is parsed, whatever its bytes look like,
// and what goes upstream is always the parsed message encoded again: the
// decision is made on what Deepgram reads, never on raw bytes, which
// escapes, duplicate keys and the like could make say something else. A
// message that cannot be read one way only is refused (or dropped under
// strip).
func (p *Policy) Check(msg []byte, service string) Verdict {
	m, typ, err := message.Parse(msg)
	if err != nil {
		why := "message refused: " + err.Error()
		return p.violation(why, "("+why+")")
	}
	for k := range m {
		if k != "type" && keyFold(k, "type") {
			// Read as the type by a decoder that folds case, it could
			// make the message another than the one judged here.
			return p.violation(strconv.Quote(message.BoundKey(k))+" reads as type", "("+message.BoundKey(k)+" reads as type)")
		}
	}
	if p.messages[service][typ] {
		return p.encoded(m, nil)
	}
	u, isUpdate := updateFields[typ]
	if service != "agent" || !isUpdate && typ != "Settings" {
		// A type the policy neither governs nor lets pass; its name is
		// the client's, so it is bounded.
		return p.violation("message type "+strconv.Quote(message.BoundKey(typ))+" is not allowed", "(message type "+message.BoundKey(typ)+")")
	}
	if typ == "Settings" {
		return p.checkSettings(m)
	}
	if p.updates != nil && !p.updates[typ] {
		return p.violation(typ+" is not allowed", typ)
	}
	if typ == "UpdatePrompt" && pinnedAnywhere(p.set, u.path) {
		// Deepgram appends an UpdatePrompt to the prompt (docs:
		// voice-agent-update-prompt): laid over the pin it would add
		// the pinned text again each time. A pinned prompt is final.
		return p.violation("UpdatePrompt: "+u.path+" is pinned", u.path+" (pinned)")
	}
	// Beside its own part an Update carries nothing a client may set, and
	// never a key that reads as its part.
	var found []string
	for k := range m {
		switch {
		case k == "type" || k == u.field:
		case keyFold(k, u.field):
			found = append(found, typ+"."+message.BoundKey(k)+" (reads as "+u.field+")")
			delete(m, k)
		case p.allow != nil:
			found = append(found, typ+"."+message.BoundKey(k))
			delete(m, k)
		}
	}
	view, ok := m[u.field]
	if ok {
		steps := strings.Split(u.path, ".")
		var kept bool
		view, kept = p.walk(view, steps, u.path, &found)
		if kept {
			view = checkPins(view, ValueAt(p.set, u.path), steps, &found)
			kept = view != nil
		}
		if !kept {
			delete(m, u.field)
		}
	}
	if len(found) > 0 && p.refuse {
		return Verdict{Refused: firstPath(found) + " is not allowed"}
	}
	if _, still := m[u.field]; !still {
		// Nothing the client may change is left: drop the update
		// rather than send the pinned values again.
		return Verdict{Drop: true, Stripped: sortedPaths(found)}
	}
	m[u.field] = mergePinned(view, ValueAt(p.set, u.path))
	return p.encoded(m, sortedPaths(found))
}

// checkSettings applies the allow list, the stored agent ids and the pins
// to a Settings message.
func (p *Policy) checkSettings(m map[string]any) Verdict {
	var found []string
	// Deepgram's Model Improvement Program opt-out (AsyncAPI spec,
	// AgentV1Settings.mip_opt_out): a user's choice to keep its data out is
	// never taken away, by the allow list or by a pin.
	optOut := m["mip_opt_out"] == true
	if id, ok := m["agent"].(string); ok {
		// A stored agent configuration (AsyncAPI spec: agent is an
		// object or a string, a uuid). Its contents are Deepgram's,
		// beyond the allow list and the pins, so only the ids the
		// policy lists pass, untouched.
		if !p.agentIDs[id] {
			found = append(found, "agent: a stored agent configuration id")
			delete(m, "agent")
		}
	}
	storedAgent := false
	if _, ok := m["agent"].(string); ok {
		storedAgent = true
	}
	for k, v := range m {
		if k == "type" || storedAgent && k == "agent" || k == "mip_opt_out" && optOut {
			continue
		}
		if p.allow != nil && (k == "" || strings.Contains(k, ".")) {
			found = append(found, message.BoundKey(k))
			delete(m, k)
			continue
		}
		if out, kept := p.walk(v, []string{message.BoundKey(k)}, k, &found); kept {
			m[k] = out
		} else {
			delete(m, k)
		}
	}
	checkPins(m, p.set, nil, &found)
	if len(found) > 0 && p.refuse {
		return Verdict{Refused: firstPath(found) + " is not allowed"}
	}
	for k, sv := range p.set {
		dropFoldedTwins(m, k)
		if storedAgent && k == "agent" {
			continue // never merged into: it is not an object
		}
		m[k] = mergePinned(m[k], sv)
	}
	if optOut {
		m["mip_opt_out"] = true
	}
	v := p.encoded(m, sortedPaths(found))
	v.Settings = m
	return v
}

// walk judges v, the value at path (steps: its keys below Settings), against
// the allow list, and returns what of it may go on and whether anything
// does. A value the policy pins whole is no violation: the pin replaces it
// (the React component always sends agent.think.provider, which a policy
// that pins the model must not refuse). Each place outside the list is added to found, as a path with the
// array indices that lead to it. Without an allow list everything passes.
//
// An array on the way to an allowed path is walked element by element, each
// element at the array's own path: "agent.think.prompt" allows the prompt of
// a single think block and of each fallback provider in an array of them
// (AsyncAPI spec: agent.think and agent.speak are an object or an array). A
// key that is empty or holds a dot is always a violation: no allow entry can
// name it, and as a dotted path it would read as another.
func (p *Policy) walk(v any, steps []string, path string, found *[]string) (any, bool) {
	if p.allow == nil || p.allowed(path) || underAny(p.pinned, path) {
		return v, true
	}
	if !p.isAncestor(path) {
		*found = append(*found, strings.Join(steps, "."))
		return nil, false
	}
	switch c := v.(type) {
	case map[string]any:
		if len(c) == 0 {
			return c, true
		}
		for k, child := range c {
			below := append(steps[:len(steps):len(steps)], message.BoundKey(k))
			if k == "" || strings.Contains(k, ".") {
				*found = append(*found, strings.Join(below, "."))
				delete(c, k)
				continue
			}
			if out, kept := p.walk(child, below, path+"."+k, found); kept {
				c[k] = out
			} else {
				delete(c, k)
			}
		}
		return c, len(c) > 0
	case []any:
		if len(c) == 0 {
			return c, true
		}
		kept := c[:0]
		last := len(steps) - 1
		for i, el := range c {
			at := append(steps[:last:last], steps[last]+"["+strconv.Itoa(i)+"]")
			if out, ok := p.walk(el, at, path, found); ok {
				kept = append(kept, out)
			}
		}
		clear(c[len(kept):])
		return kept, len(kept) > 0
	}
	*found = append(*found, strings.Join(steps, "."))
	return nil, false
}

// encoded is the verdict that sends m, encoded again.
func (p *Policy) encoded(m map[string]any, stripped []string) Verdict {
	out, err := message.Encode(m)
	if err != nil {
		// Only values the decoder and the policy made are in m: this
		// cannot happen, and nothing unjudged goes upstream if it does.
		return Verdict{Drop: true, Stripped: []string{"(message could not be encoded)"}}
	}
	return Verdict{Out: out, Stripped: stripped}
}

// allowed reports whether path is an allowed path or lies under one.
func (p *Policy) allowed(path string) bool { return underAny(p.allow, path) }

// Pins reports whether the policy pins the dotted path, or a path above
// it, whole: a client's value there is replaced, whatever it was.
func (p *Policy) Pins(path string) bool { return underAny(p.pinned, path) }

// underAny reports whether path is one of paths or lies under one.
func underAny(paths []string, path string) bool {
	for _, a := range paths {
		if path == a || strings.HasPrefix(path, a+".") {
			return true
		}
	}
	return false
}

// isAncestor reports whether an allowed or pinned path lies under path, so
// that the walk must look inside it.
func (p *Policy) isAncestor(path string) bool {
	for _, list := range [][]string{p.allow, p.pinned} {
		for _, a := range list {
			if strings.HasPrefix(a, path+".") {
				return true
			}
		}
	}
	return false
}

// sortedPaths sorts the paths found, for a log line that reads the same
// whatever order the maps gave.
func sortedPaths(found []string) []string {
	slices.Sort(found)
	return found
}

// firstPath is the first path in sorted order, the one a refusal names.
func firstPath(found []string) string {
	return slices.Min(found)
}
