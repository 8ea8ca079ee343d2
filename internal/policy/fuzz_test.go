package policy

import (
	"context"
	"strings"
	"testing"

	"dgrelay/internal/message"
)

// fuzzPolicy pins a think block with a secret in its endpoint, allows a
// few paths and lists a stored agent: most of the rules at once.
const fuzzPolicy = `{"set": {"agent": {"think": {"provider": {"type": "open_ai"}, "prompt": "pinned",
  "endpoint": {"url": "https://llm.example.com", "headers": {"authorization": "Bearer ${env:LLM_KEY}"}}}}, "tags": ["relay"]},
  "allow": ["audio", "agent.think.prompt", "agent.speak", "agent.greeting"], "agent_ids": ["stored-1"]`

// elements is a JSON array of n copies of el.
func elements(el string, n int) string {
	return "[" + strings.TrimSuffix(strings.Repeat(el+",", n), ",") + "]"
}

// FuzzCheck: whatever a client sends, Check does not panic; what goes on is
// one message Parse accepts, of the type the client sent, never beside a
// drop or a refusal, and never with the pinned secret's endpoint moved;
// only refuse refuses.
func FuzzCheck(f *testing.F) {
	env := map[string]string{"LLM_KEY": "sk-LLM-ENV-SECRET"}
	policies := map[bool]*Policy{}
	for _, refuse := range []bool{false, true} {
		onViolation := map[bool]string{false: "strip", true: "refuse"}[refuse]
		p, err := Load(context.Background(), fuzzPolicy+`, "on_violation": "`+onViolation+`"}`, envLookup(env))
		if err != nil {
			f.Fatal(err)
		}
		policies[refuse] = p
	}
	f.Add([]byte(`{"type":"Settings","audio":{},"agent":{"think":{"prompt":"p"}}}`), "agent")
	f.Add([]byte(`{"type":"Settings","agent":"stored-1"}`), "agent")
	f.Add([]byte(`{"type":"UpdateThink","think":{"endpoint":{"url":"https://attacker.example"}}}`), "agent")
	f.Add([]byte(`{"type":"UpdatePrompt","prompt":"more"}`), "agent")
	f.Add([]byte(`{"type":"KeepAlive"}`), "transcription")
	f.Add([]byte(`{"type":"Settings","agent":{"thin\u212a":{"endpoint":{"url":"https://attacker.example"}}}}`), "agent")
	// At the limits: as many fallbacks as a pin is laid over, one more;
	// the deepest message Parse takes.
	f.Add([]byte(`{"type":"Settings","agent":{"think":`+elements(`{"prompt":"p"}`, maxFallbacks)+`}}`), "agent")
	f.Add([]byte(`{"type":"Settings","agent":{"think":`+elements(`{"prompt":"p"}`, maxFallbacks+1)+`}}`), "agent")
	f.Add([]byte(`{"type":"Settings","agent":{"greeting":`+strings.Repeat("[", message.MaxDepth-3)+strings.Repeat("]", message.MaxDepth-3)+`}}`), "agent")
	f.Fuzz(func(t *testing.T, msg []byte, service string) {
		_, typ, parseErr := message.Parse(msg)
		for refuse, p := range policies {
			v := p.Check(msg, service)
			if v.Refused != "" && !refuse {
				t.Fatalf("%q: refused under strip: %q", msg, v.Refused)
			}
			if v.Out == nil {
				continue
			}
			if v.Drop || v.Refused != "" || parseErr != nil {
				t.Fatalf("%q went on as %q beside drop %v, refused %q, parse %v", msg, v.Out, v.Drop, v.Refused, parseErr)
			}
			out, outType, err := message.Parse(v.Out)
			if err != nil || outType != typ {
				t.Fatalf("%q went on as %q: %v, type %q", msg, v.Out, err, outType)
			}
			if ep, ok := ValueAt(out, "agent.think.endpoint").(map[string]any); ok && ep["url"] != "https://llm.example.com" {
				t.Fatalf("%q went on as %q: the secret's endpoint moved", msg, v.Out)
			}
		}
	})
}

// FuzzLoad: whatever SETTINGS_POLICY holds, Load does not panic, and a
// policy it loads judges a Settings without panicking.
func FuzzLoad(f *testing.F) {
	f.Add(fuzzPolicy + "}")
	f.Add(`{"set":{"agent":{"think":{"endpoint":{"headers":{"a":"${env:LLM_KEY}"}}}}}}`)
	f.Add(`{"set":{"a":"${secret:projects/p/secrets/s/versions/1}"}}`)
	f.Add(`{"allow":["agent..think"],"on_violation":"refuse"}`)
	f.Add(`{"updates":{"UpdatePrompt":true},"messages":["KeepAlive"],"transcription_messages":[]}`)
	f.Add(`{"set":{"agent":{"think":` + elements(`{"provider":{"type":"x","credentials":"${env:LLM_KEY}"}}`, maxFallbacks+1) + `}}}`)
	f.Add(`{"set":` + strings.Repeat(`{"a":`, 200) + `1` + strings.Repeat("}", 200) + `}`)
	f.Add("")
	f.Fuzz(func(t *testing.T, policy string) {
		if strings.HasPrefix(policy, "@") {
			return // a file's name, not a policy
		}
		p, err := Load(context.Background(), policy, envLookup(map[string]string{"LLM_KEY": "sk-LLM-ENV-SECRET"}))
		if err != nil || p == nil {
			return
		}
		p.Check([]byte(`{"type":"Settings","audio":{},"agent":{"think":[{"prompt":"p"},{"provider":{"type":"y"}}],"greeting":"hi"}}`), "agent")
		p.Check([]byte(`{"type":"UpdateThink","think":{"prompt":"p"}}`), "agent")
	})
}
