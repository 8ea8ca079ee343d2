// Package message reads one client text message as a Settings policy must
// judge it, and writes a message the relay changed back out. Parse refuses
// any message two JSON parsers could read differently (a key twice, a byte
// order mark, a second value, nesting or values past the bounds), so that
// what a policy decides on is what Deepgram reads; Encode is the form such a
// message goes on in.
package message

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxDepth bounds how deeply a client message a policy reads may
// nest. Settings nest about six deep, a function's JSON Schema parameters a
// few more; past this the message is refused rather than read by a parser
// (Deepgram's) that may stop at another depth than ours.
const MaxDepth = 64

// MaxValues and BytesPerValue bound how many values (keys, strings,
// numbers, objects, ...) a client message a policy reads may hold: up to
// MaxValues, plus one for every BytesPerValue bytes of the message.
// A Settings holds a few hundred; one that goes on with a conversation
// (Deepgram's documented way past its 2-hour limit: the prior turns in
// agent.context.messages, AsyncAPI spec ...AgentOneOf0Context) holds seven
// per History turn, in some 50 bytes or more each, so 3,000 turns pass. The
// bound keeps what one message costs to parse, and the tree it becomes,
// near what its bytes cost, whatever its shape: a megabyte of "[0,0,0,..."
// is half a million values, four times what the bound lets it have
// (internal/policy's BenchmarkParseClientMessage measures both).
const (
	MaxValues     = 10000
	BytesPerValue = 8
)

// errDepth is a message nested past MaxDepth.
var errDepth = fmt.Errorf("nested deeper than %d", MaxDepth)

// ValueLimit is how many values a message of n bytes may hold.
func ValueLimit(n int) int { return MaxValues + n/BytesPerValue }

// messageReader reads one message's tokens, counting them.
type messageReader struct {
	dec    *json.Decoder
	values int
	limit  int // ValueLimit of the message
}

// token is the next token, counted against the message's limit.
func (r *messageReader) token() (json.Token, error) {
	if r.values++; r.values > r.limit {
		return nil, fmt.Errorf("more than %d values", r.limit)
	}
	tok, err := r.dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	return tok, nil
}

// Parse reads one client text message as a policy must: the
// policy decides on what Deepgram will read, so any message two JSON parsers
// could read differently is refused instead of guessed at. It accepts one
// JSON object and nothing after it, with no key twice in any object (Go
// keeps the last, other parsers the first), no byte order mark, nesting at
// most MaxDepth, and a string "type". Escapes are decoded, so
// "\u0053ettings" is Settings here as it is to Deepgram.
func Parse(msg []byte) (m map[string]any, typ string, err error) {
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.UseNumber()
	r := &messageReader{dec: dec, limit: ValueLimit(len(msg))}
	tok, err := r.token()
	if err != nil {
		return nil, "", err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, "", errors.New("not a JSON object")
	}
	m, err = r.object(1)
	if err != nil {
		return nil, "", err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, "", errors.New("more than one JSON value")
	}
	typ, ok := m["type"].(string)
	if !ok {
		return nil, "", errors.New("no string type")
	}
	return m, typ, nil
}

// object reads the members of an object whose '{' has just been read, at
// depth (the top object is 1).
func (r *messageReader) object(depth int) (map[string]any, error) {
	m := map[string]any{}
	for r.dec.More() {
		tok, err := r.token()
		if err != nil {
			return nil, err
		}
		key := tok.(string) // Token returns only a string where a key goes
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("duplicate key %q", BoundKey(key))
		}
		v, err := r.value(depth)
		if err != nil {
			return nil, err
		}
		m[key] = v
	}
	if _, err := r.dec.Token(); err != nil { // '}'
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	return m, nil
}

// value reads one value inside a container at depth.
func (r *messageReader) value(depth int) (any, error) {
	tok, err := r.token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil // string, json.Number, bool or nil
	}
	if depth >= MaxDepth {
		return nil, errDepth
	}
	if d == '{' {
		return r.object(depth + 1)
	}
	list := []any{}
	for r.dec.More() {
		v, err := r.value(depth + 1)
		if err != nil {
			return nil, err
		}
		list = append(list, v)
	}
	if _, err := r.dec.Token(); err != nil { // ']'
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	return list, nil
}

// BoundKey cuts a client's key for an error it reads back and a log line.
func BoundKey(k string) string {
	const max = 64
	if len(k) <= max {
		return k
	}
	return string(bytes.ToValidUTF8([]byte(k[:max]), nil)) + "…"
}

// Encode is the form of a message the relay changed that goes on: a
// client's as the policy judged it, a scrubbed one from Deepgram. HTML
// characters stay as they are (Go would escape <, > and &).
func Encode(m any) ([]byte, error) {
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}
