package message

// Type is the value of the top-level "type" key of one of Deepgram's text
// messages, as it stands in msg (no copy), or nil when msg is not a JSON
// object whose "type" is one plain string. It reads the message without
// decoding it: the relay looks at every Deepgram text message on its way to
// the client (a turn's History, its latencies, a Warning) and acts on a few
// kinds, so finding the kind must cost no allocation and a single pass.
//
// Every Deepgram agent and listen message is a JSON object with a string
// "type" (AsyncAPI spec, deepgram/deepgram-api-specs: each server message's
// schema requires it). What Type cannot be sure of, it does not guess: a
// "type" key written with escapes, a value with escapes, or a "type" given
// twice (JSON parsers disagree on which one counts) all give nil, which the
// relay treats as a message it does not act on. Type does not validate the
// rest of the message: a message a JSON parser would refuse may still give a
// type, which only ever makes the relay look closer (with a real parser)
// at one of the kinds it acts on.
func Type(msg []byte) []byte {
	i := skipSpace(msg, 0)
	if i >= len(msg) || msg[i] != '{' {
		return nil
	}
	i++
	var typ []byte
	for {
		i = skipSpace(msg, i)
		if i < len(msg) && msg[i] == '}' {
			return typ
		}
		if i >= len(msg) || msg[i] != '"' {
			return nil
		}
		end, escaped := skipString(msg, i)
		if end < 0 || escaped {
			// A key written with escapes may read "type" once decoded.
			return nil
		}
		key := msg[i+1 : end-1]
		if i = skipSpace(msg, end); i >= len(msg) || msg[i] != ':' {
			return nil
		}
		i = skipSpace(msg, i+1)
		if string(key) == "type" {
			if typ != nil || i >= len(msg) || msg[i] != '"' {
				return nil // given twice, or not a string
			}
			end, escaped := skipString(msg, i)
			if end < 0 || escaped || end-i < 3 {
				return nil
			}
			typ, i = msg[i+1:end-1], end
			for _, c := range typ {
				if c < 0x20 || c > 0x7e {
					return nil // Deepgram's kinds are ASCII words
				}
			}
		} else if i = skipValue(msg, i); i < 0 {
			return nil
		}
		if i = skipSpace(msg, i); i >= len(msg) {
			return nil
		}
		switch msg[i] {
		case ',':
			i++
		case '}':
			return typ
		default:
			return nil
		}
	}
}

// skipSpace is the index of the first byte at or after i that is not JSON
// white space.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString reads the string starting at b[i] (a quote) and returns the
// index just past its closing quote, and whether it holds an escape; -1 if
// it does not end.
func skipString(b []byte, i int) (int, bool) {
	escaped := false
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			escaped = true
			i++
		case '"':
			return i + 1, escaped
		}
	}
	return -1, escaped
}

// skipValue returns the index just past the value starting at b[i], -1 if it
// does not end. Objects and arrays are skipped by counting brackets outside
// strings; what is between them is not checked.
func skipValue(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		switch b[i] {
		case '"':
			end, _ := skipString(b, i)
			if end < 0 {
				return -1
			}
			i = end
			if depth == 0 {
				return i
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i // the end of the enclosing object: a scalar ended here
			}
			if depth--; depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		}
		i++
	}
	if depth == 0 {
		return i
	}
	return -1
}
