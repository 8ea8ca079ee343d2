package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzClientMessage: a message parseClientMessage accepts is one JSON object
// that encoding/json reads the same, whose encoded form reads back the same,
// so what the policy judged is what Deepgram is sent; nothing panics.
func FuzzClientMessage(f *testing.F) {
	for _, tc := range policyBypasses {
		f.Add([]byte(tc.msg))
	}
	nest := func(n int) []byte {
		return []byte(`{"type":"Settings","x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}
	f.Add(nest(maxMessageDepth - 2)) // the deepest accepted
	f.Add(nest(maxMessageDepth - 1)) // one past it
	f.Add([]byte(`{"type":"Settings","n":9223372036854775807,"m":-9223372036854775808,"f":1e400}`))
	f.Add([]byte(`{"type":"KeepAlive"}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"type":"Settings","a":"\ud800","b":"` + "\xff" + `"}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, typ, err := parseClientMessage(msg)
		if err != nil {
			return
		}
		var std map[string]any
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.UseNumber()
		if err := dec.Decode(&std); err != nil || !reflect.DeepEqual(m, std) || std["type"] != typ {
			t.Fatalf("%q: parsed %v, encoding/json read %v (%v)", msg, m, std, err)
		}
		out, err := encodeJSON(m)
		if err != nil {
			t.Fatalf("%q: encode: %v", msg, err)
		}
		again, _, err := parseClientMessage(out)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("%q encoded as %q reads back as %v (%v)", msg, out, again, err)
		}
	})
}
