// Package scrub removes the relay's secrets from what leaves it toward a
// client or a log: the Deepgram key and the values a Settings policy
// resolved, found as their bytes and also spelled with JSON escapes, cut by
// control characters or by characters that show as nothing, as a reader
// would still see them.
package scrub

import (
	"bytes"
	"encoding/json"
	"slices"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"dgrelay/internal/message"
)

// RedactedMark stands where a secret was.
const RedactedMark = "[redacted]"

// Scrubber removes the relay's secrets from what leaves it toward a client
// or a log: the Deepgram key, and the values the Settings policy resolved
// from ${env:} and ${secret:} references, which go to Deepgram inside
// Settings and must come back from nowhere. A secret is found as its bytes,
// and also spelled with JSON escapes (\u0073k-..., Go's \u003c for <) or cut
// by control characters, as a reader would still see it.
type Scrubber struct {
	// secrets, longest first, so that one holding another is replaced whole.
	secrets [][]byte
	// ascii: every secret is ASCII (keys and tokens are), so a reader's
	// view of a message may leave out every byte past ASCII.
	ascii bool
}

// New is the scrubber of the Deepgram key and the policy's secrets (and
// whatever else the relay must not repeat: the Redis password).
func New(apiKey string, policySecrets [][]byte) *Scrubber {
	sc := &Scrubber{}
	for _, s := range append([][]byte{[]byte(apiKey)}, policySecrets...) {
		if len(s) > 0 && !slices.ContainsFunc(sc.secrets, func(t []byte) bool { return bytes.Equal(s, t) }) {
			sc.secrets = append(sc.secrets, s)
		}
	}
	slices.SortFunc(sc.secrets, func(a, b []byte) int { return len(b) - len(a) })
	sc.ascii = !slices.ContainsFunc(sc.secrets, func(s []byte) bool { return slices.ContainsFunc(s, func(c byte) bool { return c >= 0x80 }) })
	return sc
}

// Text scrubs a whole text message from Deepgram. It returns msg itself when
// no secret is in it, which is always but for a leak: the common path is one
// search per secret. A message that spells a secret with escapes is read as
// JSON, scrubbed string by string and encoded again.
func (sc *Scrubber) Text(msg []byte) []byte {
	msg = sc.replace(msg)
	if !mayHide(msg) {
		return msg
	}
	if !sc.holdsSecret(sc.deepReadable(msg)) {
		return msg
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.UseNumber()
	if dec.Decode(&v) == nil && !dec.More() {
		if out, err := message.Encode(sc.scrubValue(v)); err == nil {
			return out
		}
	}
	// Not JSON: what a reader would see, scrubbed.
	return sc.replace(sc.deepReadable(msg))
}

// Short scrubs a close reason or a control frame's payload and keeps it
// within limit bytes (123 for a reason, 125 for a payload), cut at a UTF-8
// boundary: the mark can be longer than the secret it replaces.
func (sc *Scrubber) Short(b []byte, limit int) []byte {
	out := sc.replace(b)
	if mayHide(out) && sc.holdsSecret(sc.deepReadable(out)) {
		out = sc.replace(sc.deepReadable(out))
	}
	if len(out) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(out[cut]) {
			cut--
		}
		out = out[:cut]
	}
	return out
}

// Clean makes a message from Deepgram or a client fit for a log line or an
// Error frame: control characters and bytes that are not UTF-8 out, the
// secrets replaced as short does, at most 200 bytes.
func (sc *Scrubber) Clean(msg string) string { return sc.CleanTo(msg, 200) }

// CleanTo is Clean with another bound.
func (sc *Scrubber) CleanTo(msg string, limit int) string {
	b := []byte(msg)
	if mayHide(b) {
		b = bytes.ToValidUTF8(bytes.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, sc.replace(b)), nil)
	}
	return string(sc.Short(b, limit))
}

// replace replaces each secret's bytes; it returns b itself when none is in b.
func (sc *Scrubber) replace(b []byte) []byte {
	for _, s := range sc.secrets {
		if bytes.Contains(b, s) {
			b = bytes.ReplaceAll(b, s, []byte(RedactedMark))
		}
	}
	return b
}

// holdsSecret reports whether a secret's bytes are in b.
func (sc *Scrubber) holdsSecret(b []byte) bool {
	for _, s := range sc.secrets {
		if bytes.Contains(b, s) {
			return true
		}
	}
	return false
}

// scrubValue scrubs every string in a decoded JSON value, keys included.
func (sc *Scrubber) scrubValue(v any) any {
	switch t := v.(type) {
	case string:
		// Only a string a reader sees a secret in is rewritten, as it
		// is seen, with the secret replaced. A string may hold JSON
		// itself (a function call's arguments), escapes and all: its
		// reader decodes it once more.
		if seen := sc.deepReadable([]byte(t)); sc.holdsSecret(seen) {
			return string(sc.replace(seen))
		}
		return t
	case []any:
		for i := range t {
			t[i] = sc.scrubValue(t[i])
		}
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, c := range t {
			out[sc.scrubValue(k).(string)] = sc.scrubValue(c)
		}
		return out
	}
	return v
}

// mayHide reports whether b could spell a secret other than as its bytes: a
// backslash (a JSON escape), a control character, or anything past ASCII (a
// zero-width space, a soft hyphen, a byte that is not UTF-8, which a reader
// does not see).
func mayHide(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c < 0x20 || c >= 0x7f {
			return true
		}
	}
	return false
}

// Readable is b as a reader sees it: JSON escapes decoded wherever they
// stand, control characters left out. Escapes that are not JSON's stay as
// they are.
func (sc *Scrubber) Readable(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' || i+1 == len(b) {
			out = append(out, c)
			continue
		}
		switch e := b[i+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
			i++
		case 'b', 'f', 'n', 'r', 't':
			i++ // a control character: left out
		case 'u':
			r, n := unescapeRune(b[i:])
			if n == 0 {
				out = append(out, c)
				continue
			}
			out = utf8.AppendRune(out, r)
			i += n - 1
		default:
			out = append(out, c)
		}
	}
	return sc.visible(out)
}

// maxEscapeLayers bounds how many layers of JSON escapes deepReadable
// undoes: JSON in a string in JSON in a string, and more.
const maxEscapeLayers = 4

// deepReadable is b as a reader sees it after decoding it as JSON up to
// maxEscapeLayers times: a secret escaped inside a JSON string that itself
// sits in a JSON string ("{\"k\":\"\\u0073k-...\"}") shows only then.
func (sc *Scrubber) deepReadable(b []byte) []byte {
	out := sc.visible(b)
	for range maxEscapeLayers {
		if !bytes.Contains(out, []byte{'\\'}) {
			break
		}
		out = sc.Readable(out)
	}
	return out
}

// unescapeRune decodes the \uXXXX escape (or surrogate pair of two) at the
// start of b, returning the rune and the bytes it took, 0 when b does not
// start with one.
func unescapeRune(b []byte) (rune, int) {
	r := hex4(b)
	if r < 0 {
		return 0, 0
	}
	if utf16.IsSurrogate(r) {
		if r2 := hex4(b[6:]); r2 >= 0 {
			if pair := utf16.DecodeRune(r, r2); pair != utf8.RuneError {
				return pair, 12
			}
		}
		return utf8.RuneError, 6
	}
	return r, 6
}

// hex4 reads \uXXXX at the start of b, or returns -1.
func hex4(b []byte) rune {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range b[2:6] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return -1
		}
	}
	return r
}

// visible is b as a reader may see it: without control characters, bytes
// that are not UTF-8, and characters that show as nothing. No list of those
// is complete (zero-width spaces and joiners, soft hyphens, variation
// selectors, fillers, the U+FFFD a decoder puts for a broken byte), so when
// every secret is ASCII every byte past ASCII is left out; otherwise format
// characters, marks, separators and U+FFFD are. It returns b itself when
// there is nothing to leave out.
func (sc *Scrubber) visible(b []byte) []byte {
	if !mayHide(b) {
		return b
	}
	out := make([]byte, 0, len(b))
	if sc.ascii {
		for _, c := range b {
			if c >= 0x20 && c < 0x7f {
				out = append(out, c)
			}
		}
		return out
	}
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != utf8.RuneError && !isControl(r) && !unicode.In(r, unicode.Cc, unicode.Cf, unicode.Mn, unicode.Me, unicode.Zl, unicode.Zp) &&
			!(unicode.Is(unicode.Zs, r) && r != ' ') && r != '\u3164' && r != '\uffa0' && r != '\u115f' && r != '\u1160' {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
