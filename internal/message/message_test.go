package message

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// bypasses are the client messages of the policy's bypass tests (main's
// policyBypasses): ones a decision on raw bytes would have passed unparsed.
var bypasses = []string{
	`{"type":"\u0053ettings","audio":{},"agent":{"listen":{"provider":{"model":"mine"}}}}`,
	`{"type":"\u0055pdateSpeak","speak":{"provider":{"model":"mine"}}}`,
	`{"type":"KeepAlive","type":"Settings","agent":{"listen":{"provider":{"model":"mine"}}}}`,
	`{"type":"Settings","agent":{"think":{"prompt":"a","prompt":"mine"}}}`,
	"\ufeff" + `{"type":"Settings","agent":{"listen":{"provider":{"model":"mine"}}}}`,
	`{"type":"Settings","agent":{"think":{"prompt":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}}}`,
	`{"type":"KeepAlive"} {"type":"Settings","agent":{"listen":{"provider":{"model":"mine"}}}}`,
	`{"agent":{"listen":{"provider":{"model":"mine"}}}}`,
	`{"type":"UpdateListen","listen":{"provider":{"model":"mine"}}}`,
	`{"type":"UpdateVoice","agent":{"listen":{"provider":{"model":"mine"}}}}`,
	`{"type":"Settings","audio":{},"agent":{"listen.provider":{"model":"mine"}}}`,
	`{"type":"Settings","audio":{},"":{"agent":{"listen":{"provider":{"model":"mine"}}}}}`,
	`{"type":"Settings","agent":{"context":[` + strings.Repeat("0,", 2*MaxValues) + `0]},"x":"mine"}`,
}

// nest is a Settings whose x holds n nested arrays: n+1 levels deep.
func nest(n int) []byte {
	return []byte(`{"type":"Settings","x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
}

// dense is a Settings whose x holds n values: n+5 counted, with the object,
// the type's key and value, x and the array.
func dense(n int) []byte {
	return []byte(`{"type":"Settings","x":[` + strings.Repeat("0,", n-1) + `0]}`)
}

// densest is the most values x may hold in dense's shape.
func densest() int {
	n := 1
	for n+1+5 <= ValueLimit(len(dense(n+1))) {
		n++
	}
	return n
}

// FuzzClientMessage: a message Parse accepts is one JSON object
// that encoding/json reads the same, whose encoded form reads back the same,
// so what the policy judged is what Deepgram is sent; nothing panics.
func FuzzClientMessage(f *testing.F) {
	for _, msg := range bypasses {
		f.Add([]byte(msg))
	}
	f.Add(nest(MaxDepth - 2))   // the deepest accepted
	f.Add(nest(MaxDepth - 1))   // one past it
	f.Add(dense(densest()))     // the most values accepted
	f.Add(dense(densest() + 1)) // one past it
	f.Add([]byte(`{"type":"Settings","` + strings.Repeat("k", 100) + `":1,"` + strings.Repeat("k", 100) + `":2}`))
	f.Add([]byte(`{"type":"Settings","n":9223372036854775807,"m":-9223372036854775808,"f":1e400}`))
	f.Add([]byte(`{"type":"KeepAlive"}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"type":"Settings","a":"\ud800","b":"` + "\xff" + `"}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, typ, err := Parse(msg)
		if err != nil {
			return
		}
		var std map[string]any
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.UseNumber()
		if err := dec.Decode(&std); err != nil || !reflect.DeepEqual(m, std) || std["type"] != typ {
			t.Fatalf("%q: parsed %v, encoding/json read %v (%v)", msg, m, std, err)
		}
		out, err := Encode(m)
		if err != nil {
			t.Fatalf("%q: encode: %v", msg, err)
		}
		again, _, err := Parse(out)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("%q encoded as %q reads back as %v (%v)", msg, out, again, err)
		}
	})
}

// TestLimits: the bounds hold exactly where they are documented.
func TestLimits(t *testing.T) {
	if _, _, err := Parse(nest(MaxDepth - 1)); err != nil {
		t.Errorf("depth %d: %v", MaxDepth, err)
	}
	if _, _, err := Parse(nest(MaxDepth)); err == nil || err.Error() != "nested deeper than "+strconv.Itoa(MaxDepth) {
		t.Errorf("depth %d: %v", MaxDepth+1, err)
	}
	n := densest()
	if _, _, err := Parse(dense(n)); err != nil {
		t.Errorf("%d values: %v", n, err)
	}
	if _, _, err := Parse(dense(n + 1)); err == nil || !strings.HasPrefix(err.Error(), "more than ") {
		t.Errorf("%d values: %v", n+1, err)
	}
	for msg, want := range map[string]string{
		`{"type":"KeepAlive","type":"Settings"}`: `duplicate key "type"`,
		"\ufeff" + `{"type":"Settings"}`:         "not JSON: ",
		`{"type":"KeepAlive"} {}`:                "more than one JSON value",
		`{"type":1}`:                             "no string type",
		`["type"]`:                               "not a JSON object",
		`{"type":"Settings","` + strings.Repeat("k", 100) + `":1,"` + strings.Repeat("k", 100) + `":2}`: `duplicate key "` + strings.Repeat("k", 64) + `…"`,
	} {
		if _, _, err := Parse([]byte(msg)); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%.40s: %v, want %q", msg, err, want)
		}
	}
}

// TestEncode: HTML characters stay as they are, and no newline follows.
func TestEncode(t *testing.T) {
	out, err := Encode(map[string]any{"content": "<a&b>"})
	if err != nil || string(out) != `{"content":"<a&b>"}` {
		t.Errorf("%s, %v", out, err)
	}
}

// TestBoundKey: a long key is cut at a character boundary and marked.
func TestBoundKey(t *testing.T) {
	if got := BoundKey(strings.Repeat("é", 40)); got != strings.Repeat("é", 32)+"…" {
		t.Errorf("%q", got)
	}
	if got := BoundKey("type"); got != "type" {
		t.Errorf("%q", got)
	}
}
