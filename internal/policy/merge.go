package policy

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"dgrelay/internal/message"
)

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
		// At most maxFallbacks elements: checkPins saw to it. One that
		// is not an object (an array in the array, say) gets no pin to
		// merge into: the pin takes its place.
		for i, el := range c {
			if obj, ok := el.(map[string]any); ok {
				c[i] = mergeObject(obj, sobj)
			} else {
				c[i] = deepCopy(server)
			}
		}
		return c
	}
	return deepCopy(server)
}

// maxFallbacks bounds an array that a pinned object is laid over, element by
// element: each element gets a copy of the pin, so without a bound a client
// could turn a megabyte of "{}," into a hundred thousand copies of a pinned
// prompt (measured: 1 MiB became 471 MB for Deepgram and 2.3 GB of the
// relay's memory). Deepgram's fallback providers are a handful.
const maxFallbacks = 8

// checkPins finds, in the client's value c where the policy pins s, what the
// pins cannot be laid over safely, and takes it out: a key that differs from
// a pinned key only in case (as a decoder that folds case would read it,
// beside or instead of the pinned one), and an array of more than
// maxFallbacks elements under a pinned object. Each is added to found (a
// violation) at its path, steps. It returns what is left of c, nil for
// nothing.
func checkPins(c, s any, steps []string, found *[]string) any {
	sobj, ok := s.(map[string]any)
	if !ok {
		return c
	}
	switch cv := c.(type) {
	case map[string]any:
		for ck, cval := range cv {
			below := append(steps[:len(steps):len(steps)], message.BoundKey(ck))
			if _, exact := sobj[ck]; !exact && foldsToAny(ck, sobj) {
				*found = append(*found, strings.Join(below, ".")+" (reads as a pinned key)")
				delete(cv, ck)
				continue
			}
			if sval, pinned := sobj[ck]; pinned && !wholeKeys[ck] {
				if out := checkPins(cval, sval, below, found); out == nil {
					delete(cv, ck)
				} else {
					cv[ck] = out
				}
			}
		}
		return cv
	case []any:
		if len(cv) > maxFallbacks {
			*found = append(*found, strings.Join(steps, ".")+" (more than "+strconv.Itoa(maxFallbacks)+" elements under a pinned object)")
			return nil
		}
		last := len(steps) - 1
		for i, el := range cv {
			at := append(steps[:last:last], steps[last]+"["+strconv.Itoa(i)+"]")
			cv[i] = checkPins(el, s, at, found)
		}
		return cv
	}
	return c
}

// foldsToAny reports whether k reads as one of obj's keys under case
// folding.
func foldsToAny(k string, obj map[string]any) bool {
	for sk := range obj {
		if keyFold(k, sk) {
			return true
		}
	}
	return false
}

// keyFold reports whether two keys read the same to a decoder that ignores
// case: Go's (Unicode simple folding: the Kelvin sign is k, the long s is
// s), Java's equalsIgnoreCase and Python's upper() and lower() (the dotless
// and the dotted I are i). Each rune is compared as the lower case of its
// upper case, which covers all of them.
func keyFold(a, b string) bool {
	if a == b {
		return true
	}
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if foldRune(ra) != foldRune(rb) {
			return false
		}
		a, b = a[na:], b[nb:]
	}
	return a == "" && b == ""
}

// foldRune is r as keyFold compares it.
func foldRune(r rune) rune {
	return unicode.ToLower(unicode.ToUpper(unicode.ToLower(r)))
}

// mergeObject lays the pinned object s over the client's c, in place. A
// client key that differs from a pinned one only in case goes too (checkPins
// has counted it a violation): a decoder that matches keys regardless of
// case (Go's encoding/json, with Unicode folding: "thin\u212a" is think to
// it) must not read the client's beside or instead of the pinned one.
func mergeObject(c, s map[string]any) map[string]any {
	for k, sv := range s {
		dropFoldedTwins(c, k)
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

// dropFoldedTwins deletes m's keys other than k that a decoder ignoring
// case reads as k (keyFold), before a pin is written at k, so that no
// twin such a decoder could read in the pin's place stays beside it.
func dropFoldedTwins(m map[string]any, k string) {
	for ck := range m {
		if ck != k && keyFold(ck, k) {
			delete(m, ck)
		}
	}
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

// ValueAt returns the value at a dotted path in m (the paths a policy's
// allow list and pins are written in), or nil. The root package's tests
// read messages with it.
func ValueAt(m map[string]any, path string) any {
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
