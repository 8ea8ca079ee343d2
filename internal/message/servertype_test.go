package message

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestType(t *testing.T) {
	for _, c := range []struct{ msg, want string }{
		{`{"type":"Welcome","request_id":"r"}`, "Welcome"},
		{` { "request_id" : "r" , "type" : "History" } `, "History"},
		{`{"role":"assistant","content":"{\"type\":\"Error\"}","type":"ConversationText"}`, "ConversationText"},
		{`{"a":{"type":"Inner"},"b":[{"type":"x"}],"type":"Outer"}`, "Outer"},
		{`{"a":1,"b":true,"c":null,"d":-1.5e3,"type":"T"}`, "T"},
		{`{"type":"Warning","code":"MAXIMUM_SESSION_LENGTH_APPROACHING"}`, "Warning"},
		// Not sure, so nothing.
		{`{"type":"A","type":"B"}`, ""},
		{`{"\u0074ype":"A"}`, ""},
		{`{"type":"\u0041"}`, ""},
		{`{"type":""}`, ""},
		{`{"type":1}`, ""},
		{`{"a":"x"}`, ""},
		{`["type","A"]`, ""},
		{`{"type":"A"`, ""},
		{`{"a":"unterminated,"type":"A"}`, ""},
		{``, ""},
	} {
		if got := string(Type([]byte(c.msg))); got != c.want {
			t.Errorf("Type(%s) = %q, want %q", c.msg, got, c.want)
		}
	}
}

func TestTypeAllocatesNothing(t *testing.T) {
	msg := []byte(`{"type":"History","role":"user","content":"` + strings.Repeat("x", 4096) + `"}`)
	if n := testing.AllocsPerRun(100, func() { _ = Type(msg) }); n != 0 {
		t.Fatalf("Type allocates %v times per message", n)
	}
}

// FuzzType holds Type to what a JSON parser reads: whenever both read a
// message, they read the same type.
func FuzzType(f *testing.F) {
	for _, s := range []string{
		`{"type":"Welcome","request_id":"r"}`,
		`{"type":"A","type":"B"}`,
		`{"a":{"type":"x"},"type":"y"}`,
		`{"a":"\"type\":\"z\"","type":"y"}`,
		`{"\u0074ype":"A","type":"B"}`,
		`{"type":"A\\"}`,
		`{"type":"Y","Type":"X"}`,
		`{` + strings.Repeat(`"a":[`, 64) + `1` + strings.Repeat(`]`, 64) + `,"type":"D"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		got := Type(msg)
		// A map, not a struct: encoding/json matches struct fields
		// without regard to case, and JSON.parse (the client's) does.
		var m map[string]any
		if got == nil || json.Unmarshal(msg, &m) != nil {
			return
		}
		if typ, _ := m["type"].(string); typ != string(got) {
			t.Fatalf("Type(%q) = %q; encoding/json reads %q", msg, got, m["type"])
		}
	})
}
