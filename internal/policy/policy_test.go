package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"dgrelay/internal/message"
	"dgrelay/internal/scrub"
)

// testAPIKey stands for the Deepgram key beside the policy's secrets.
const testAPIKey = "dg-secret-KEY-0123456789abcdef"

// envLookup is a Lookup of env's variables; no secret is found.
func envLookup(env map[string]string) Lookup {
	return func(_ context.Context, kind, name string) (string, error) {
		if kind != "env" {
			return "", fmt.Errorf("secret %s: no secret store in this test", name)
		}
		return env[name], nil
	}
}

// at is the value at a dotted path in m, or nil.
func at(m map[string]any, path string) any { return ValueAt(m, path) }

// mustPolicy loads a policy or fails the test.
func mustPolicy(t *testing.T, policy string, env map[string]string) *Policy {
	t.Helper()
	p, err := Load(context.Background(), policy, envLookup(env))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return p
}

// sent is the message a verdict sends on, parsed; nil when none goes.
func sent(t *testing.T, v Verdict) map[string]any {
	t.Helper()
	if v.Out == nil {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(v.Out, &m); err != nil {
		t.Fatalf("%s: %v", v.Out, err)
	}
	return m
}

// bothWays runs f with the policy under strip and under refuse.
func bothWays(t *testing.T, policy string, env map[string]string, f func(t *testing.T, p *Policy, refuse bool)) {
	for _, onViolation := range []string{"strip", "refuse"} {
		t.Run(onViolation, func(t *testing.T) {
			pol := strings.TrimSuffix(strings.TrimSpace(policy), "}") + `, "on_violation": "` + onViolation + `"}`
			f(t, mustPolicy(t, pol, env), onViolation == "refuse")
		})
	}
}

// TestPolicyResolvesInArrays: references are resolved at every depth, inside
// arrays too, since agent.think.functions[].endpoint.headers is where a
// function's credentials go; each value joins the secrets the scrub removes.
func TestPolicyResolvesInArrays(t *testing.T) {
	env := envLookup(map[string]string{"FN_KEY": "fn-ENV-SECRET-1", "DEEP": "deep-ENV-SECRET-2", "MAPPED": "mapped-ENV-SECRET-3"})
	p, err := Load(context.Background(), `{"set": {"agent": {"think": {"functions": [
	  {"name": "lookup", "endpoint": {"url": "https://fn.example.com", "headers": {"authorization": "Bearer ${env:FN_KEY}"}}}],
	  "provider": {"x": [["${env:DEEP}", 1, null], {"y": ["${env:MAPPED}"]}]}}}}}`, env)
	if err != nil {
		t.Fatal(err)
	}
	fn := at(p.set, "agent.think.functions").([]any)[0].(map[string]any)
	if got := ValueAt(fn, "endpoint.headers.authorization"); got != "Bearer fn-ENV-SECRET-1" {
		t.Errorf("functions[0].endpoint.headers.authorization is %v", got)
	}
	x := at(p.set, "agent.think.provider.x").([]any)
	if got := x[0].([]any)[0]; got != "deep-ENV-SECRET-2" {
		t.Errorf("an array in an array: %v", got)
	}
	if got := x[1].(map[string]any)["y"].([]any)[0]; got != "mapped-ENV-SECRET-3" {
		t.Errorf("an array in a map in an array: %v", got)
	}
	leak := "fn-ENV-SECRET-1 deep-ENV-SECRET-2 mapped-ENV-SECRET-3"
	if got := string(scrub.New(testAPIKey, p.SecretValues()).Text([]byte(leak))); got != "[redacted] [redacted] [redacted]" {
		t.Errorf("the values are not all scrubbed: %q", got)
	}
	_, err = Load(context.Background(), `{"set": {"a": [{"b": "${env:NOT_SET_ANYWHERE}"}]}}`, env)
	if err == nil || !strings.Contains(err.Error(), "set.a[0].b: ${env:NOT_SET_ANYWHERE} is not set") {
		t.Errorf("an unset reference in an array: %v", err)
	}
}

// TestPolicyCheck covers the merge and allow rules on their own.
func TestPolicyCheck(t *testing.T) {
	p, err := Load(context.Background(), `{
	  "set": {"agent": {"think": {"functions": [{"name": "server_fn"}], "provider": {"model": "m"}}}},
	  "allow": ["agent.think"]}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := p.Check([]byte(`{"type":"Settings","agent":{"think":{"functions":[{"name":"a"},{"name":"b"}],"provider":{"type":"open_ai","model":"x"},"temperature":0.25}}}`), "agent")
	var got map[string]any
	json.Unmarshal(v.Out, &got)
	want := map[string]any{"type": "Settings", "agent": map[string]any{"think": map[string]any{
		"functions":   []any{map[string]any{"name": "server_fn"}}, // arrays are replaced whole
		"provider":    map[string]any{"model": "m"},               // a provider is replaced whole
		"temperature": 0.25,                                       // numbers pass exactly
	}}}
	if !reflect.DeepEqual(got, want) || len(v.Stripped) != 0 {
		t.Errorf("got %v (stripped %v)\nwant %v", got, v.Stripped, want)
	}
	if v := p.Check([]byte(`{"type":"Settings","agent":{"listen":{"x":1},"think":{"prompt":"p"}},"mip_opt_out":false}`), "agent"); !reflect.DeepEqual(v.Stripped, []string{"agent.listen", "mip_opt_out"}) {
		t.Errorf("stripped %v", v.Stripped)
	}
	// UpdateListen changes agent.listen, outside this allow list.
	if v := p.Check([]byte(`{"type":"UpdateListen","listen":{"provider":{"model":"x"}}}`), "agent"); !v.Drop || !reflect.DeepEqual(v.Stripped, []string{"agent.listen"}) {
		t.Errorf("UpdateListen: %q, stripped %v", v.Out, v.Stripped)
	}
	if v := p.Check([]byte(`{"type":"KeepAlive"}`), "agent"); string(v.Out) != `{"type":"KeepAlive"}` {
		t.Errorf("KeepAlive was changed to %s", v.Out)
	}
	for _, msg := range []string{`not json "Settings"`, `{"type":"Settingsx"}`, `{"type":"UpdateInstructions","agent":{"think":{}}}`} {
		if v := p.Check([]byte(msg), "agent"); !v.Drop || v.Out != nil {
			t.Errorf("%s went on as %q", msg, v.Out)
		}
	}
	noAllow, _ := Load(context.Background(), `{"set":{"agent":{"language":"de"}}}`, nil)
	v = noAllow.Check([]byte(`{"type":"Settings","agent":{"language":"en","greeting":"hi"}}`), "agent")
	json.Unmarshal(v.Out, &got)
	if at(got, "agent.language") != "de" || at(got, "agent.greeting") != "hi" || len(v.Stripped) != 0 {
		t.Errorf("without allow, anything not pinned passes: %s", v.Out)
	}
}

// TestPolicyUpdateOutsideAllow: an allowed Update whose whole part lies
// outside the allow list is dropped (or refused), not sent with the
// client's values.
func TestPolicyUpdateOutsideAllow(t *testing.T) {
	for _, onViolation := range []string{"strip", "refuse"} {
		p, err := Load(context.Background(), `{"allow":["agent.think.prompt"],"on_violation":"`+onViolation+`"}`, nil)
		if err != nil {
			t.Fatal(err)
		}
		v := p.Check([]byte(`{"type":"UpdateSpeak","speak":{"provider":{"model":"mine"}}}`), "agent")
		if v.Out != nil || (onViolation == "refuse") != (v.Refused == "agent.speak is not allowed") {
			t.Errorf("%s: %q, refused %q", onViolation, v.Out, v.Refused)
		}
	}
}

// BenchmarkParseClientMessage: what parsing costs per byte for a realistic
// continuation and for the densest message the value bound lets through.
func BenchmarkParseClientMessage(b *testing.B) {
	realistic := continuationSettings(3000)
	// The densest message the bound lets through: values of two bytes
	// each, as many as the bound allows for its length.
	denseOf := func(values int) []byte {
		return []byte(`{"type":"Settings","x":[` + strings.Repeat("0,", values-1) + `0]}`)
	}
	values := 1
	for len(denseOf(values+1)) > 0 && values+1+7 <= message.ValueLimit(len(denseOf(values+1))) {
		values++
	}
	dense := denseOf(values)
	pad := []byte(`{"type":"Settings","x":"` + strings.Repeat("a", len(realistic)) + `"}`)
	for _, tc := range []struct {
		name string
		msg  []byte
	}{{"one-string", pad}, {"continuation-3000", realistic}, {"densest-allowed", dense}} {
		if _, _, err := message.Parse(tc.msg); err != nil {
			b.Fatalf("%s: %v", tc.name, err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.msg)))
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = message.Parse(tc.msg)
			}
		})
	}
}
