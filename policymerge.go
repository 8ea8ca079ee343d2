package main

import "strings"

// sealed, as a value in the policy's set, removes the client's value of
// that key: sealBlocks puts it at the endpoint of a think or speak block
// whose pinned values carry a secret, where the policy pins no endpoint.
type sealed struct{}

// wholeKeys are the objects a pin replaces whole instead of merging key by
// key. A provider's keys belong to its type (AsyncAPI spec,
// ThinkSettingsV1Provider and SpeakSettingsV1Provider are oneOf per type: a
// client's model_id or credentials beside a pinned open_ai provider would
// go to it); an endpoint's headers belong to its url.
var wholeKeys = map[string]bool{"provider": true, "endpoint": true}

// mergePinned lays the server's value over the client's: objects merge key
// by key (provider and endpoint are replaced whole), anything else (arrays
// included) is replaced whole. A pinned object over an array of objects is
// laid over each element: agent.think and agent.speak may be arrays of
// fallback providers (AsyncAPI spec, ...AgentOneOf0Think1/Speak1), and a pin
// holds for each of them. The server's values are copied, so no session can
// alter the policy.
func mergePinned(client, server any) any {
	sobj, ok := server.(map[string]any)
	switch {
	case server == nil:
		return client
	case !ok:
		return deepCopy(server)
	}
	switch c := client.(type) {
	case map[string]any:
		return mergeObject(c, sobj)
	case []any:
		for i, el := range c {
			if obj, ok := el.(map[string]any); ok {
				c[i] = mergeObject(obj, sobj)
			}
		}
		return c
	}
	return deepCopy(server)
}

// mergeObject lays the pinned object s over the client's c, in place. A
// client key that differs from a pinned one only in case goes too: a
// decoder that matches keys regardless of case (Go's encoding/json, with
// Unicode folding: "thin\u212a" is think to it) must not read the client's
// beside or instead of the pinned one.
func mergeObject(c, s map[string]any) map[string]any {
	for k, sv := range s {
		for ck := range c {
			if ck != k && strings.EqualFold(ck, k) {
				delete(c, ck)
			}
		}
		switch {
		case sv == sealed{}:
			delete(c, k)
		case wholeKeys[k]:
			c[k] = deepCopy(sv)
		default:
			c[k] = mergePinned(c[k], sv)
		}
	}
	return c
}

// deepCopy copies a pinned value, leaving out sealed keys.
func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, c := range t {
			if c != (sealed{}) {
				out[k] = deepCopy(c)
			}
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, c := range t {
			out[i] = deepCopy(c)
		}
		return out
	}
	return v
}

// lookupPath returns the value at a dotted path in m, or nil.
func lookupPath(m map[string]any, path string) any {
	if path == "" {
		return m
	}
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = obj[k]
	}
	return cur
}

// pinnedAnywhere reports whether the set pins a value at the dotted path,
// in an object or in any element of an array on the way (a pinned array of
// think providers pins each one's prompt).
func pinnedAnywhere(v any, path string) bool {
	if path == "" {
		return v != nil
	}
	key, rest, _ := strings.Cut(path, ".")
	switch c := v.(type) {
	case map[string]any:
		child, ok := c[key]
		return ok && child != (sealed{}) && pinnedAnywhere(child, rest)
	case []any:
		for _, el := range c {
			if pinnedAnywhere(el, path) {
				return true
			}
		}
	}
	return false
}
