package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sethvargo/go-envconfig"
)

// settingsPolicy is the operator's say over what clients send in Settings
// and the Update messages: values the server sets (provider keys included),
// the paths a client may set, and which updates it may send. It is read once
// at start and never changes.
type settingsPolicy struct {
	set     map[string]any
	allow   []string        // nil: no allow list
	refuse  bool            // on_violation "refuse"; else "strip"
	updates map[string]bool // nil: every update allowed
	// messages are the other client message types that pass, as they came
	// but for the encoding; any type neither governed nor listed is a
	// violation, so that a message Deepgram adds later (UpdateListen did)
	// cannot carry settings past the policy.
	messages map[string]bool
	// secrets are the resolved ${secret:} and ${env:} values. They go to
	// Deepgram inside Settings and nowhere else: text frames coming back are
	// scrubbed of them.
	secrets [][]byte
}

// policyFile is SETTINGS_POLICY's JSON.
type policyFile struct {
	Set         map[string]any  `json:"set"`
	Allow       *[]string       `json:"allow"`
	OnViolation string          `json:"on_violation"`
	Updates     map[string]bool `json:"updates"`
	Messages    *[]string       `json:"messages"`
}

// defaultMessages are the client messages of Deepgram's Voice Agent API that
// change no setting: they pass under any policy that does not list its own.
var defaultMessages = []string{"KeepAlive", "InjectUserMessage", "InjectAgentMessage", "FunctionCallResponse"}

// updateFields maps each Update message to the part of Settings it changes,
// so the same allow list and the same pinned values govern both.
var updateFields = map[string]struct{ field, path string }{
	"UpdatePrompt": {"prompt", "agent.think.prompt"},
	"UpdateSpeak":  {"speak", "agent.speak"},
	"UpdateThink":  {"think", "agent.think"},
	"UpdateListen": {"listen", "agent.listen"},
}

var policyReference = regexp.MustCompile(`\$\{(env|secret):([^}]*)\}`)

// loadPolicy reads SETTINGS_POLICY (inline JSON or @path) and resolves its
// references. An empty value is no policy.
func loadPolicy(ctx context.Context, value string, env envconfig.Lookuper, secrets *secretReader) (*settingsPolicy, error) {
	if value == "" {
		return nil, nil
	}
	raw := []byte(value)
	if path, ok := strings.CutPrefix(value, "@"); ok {
		var err error
		if raw, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("SETTINGS_POLICY: %w", err)
		}
	}
	var pf policyFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&pf); err != nil {
		return nil, fmt.Errorf("SETTINGS_POLICY: not a valid policy: %w", err)
	}
	p := &settingsPolicy{set: pf.Set, updates: pf.Updates}
	switch pf.OnViolation {
	case "", "strip":
	case "refuse":
		p.refuse = true
	default:
		return nil, fmt.Errorf("SETTINGS_POLICY: on_violation %q: want strip or refuse", pf.OnViolation)
	}
	for name := range pf.Updates {
		if _, ok := updateFields[name]; !ok {
			return nil, fmt.Errorf("SETTINGS_POLICY: updates: %q is not UpdatePrompt, UpdateSpeak, UpdateThink or UpdateListen", name)
		}
	}
	messages := defaultMessages
	if pf.Messages != nil {
		messages = *pf.Messages
	}
	p.messages = map[string]bool{}
	for _, m := range messages {
		if _, governed := updateFields[m]; governed || m == "Settings" || m == "" {
			return nil, fmt.Errorf("SETTINGS_POLICY: messages: %q is governed by the policy itself, or empty", m)
		}
		p.messages[m] = true
	}
	if pf.Allow != nil {
		p.allow = []string{}
		for _, a := range *pf.Allow {
			if a == "" || slices.Contains(strings.Split(a, "."), "") {
				return nil, fmt.Errorf("SETTINGS_POLICY: allow: %q is not a dotted path", a)
			}
			p.allow = append(p.allow, a)
		}
	}
	if _, ok := p.set["type"]; ok {
		return nil, errors.New("SETTINGS_POLICY: set may not change type")
	}
	// p.set is a map: resolve changes it in place.
	if _, err := p.resolve(ctx, p.set, "set", env, secrets); err != nil {
		return nil, err
	}
	return p, nil
}

// resolve replaces ${env:NAME} and ${secret:projects/...} in every string
// under v, once, and remembers the values as secrets; it returns v with them
// replaced. It walks arrays as well as objects, at any depth:
// agent.think.functions[].endpoint.headers is where a function's credentials
// go. An error names the reference, never a value.
func (p *settingsPolicy) resolve(ctx context.Context, v any, path string, env envconfig.Lookuper, secrets *secretReader) (any, error) {
	switch c := v.(type) {
	case map[string]any:
		for k, child := range c {
			out, err := p.resolve(ctx, child, path+"."+k, env, secrets)
			if err != nil {
				return nil, err
			}
			c[k] = out
		}
	case []any:
		for i, child := range c {
			out, err := p.resolve(ctx, child, path+"["+strconv.Itoa(i)+"]", env, secrets)
			if err != nil {
				return nil, err
			}
			c[i] = out
		}
	case string:
		var failed error
		out := policyReference.ReplaceAllStringFunc(c, func(ref string) string {
			m := policyReference.FindStringSubmatch(ref)
			kind, name := m[1], m[2]
			var val string
			switch kind {
			case "env":
				got, ok := env.Lookup(name)
				if !ok || got == "" {
					failed = fmt.Errorf("SETTINGS_POLICY: %s: ${env:%s} is not set", path, name)
				}
				val = got
			case "secret":
				got, err := secrets.access(ctx, name)
				if err != nil {
					failed = fmt.Errorf("SETTINGS_POLICY: %s: %w", path, err)
				}
				val = got
			}
			if val != "" {
				p.secrets = append(p.secrets, []byte(val))
			}
			return val
		})
		if failed != nil {
			return nil, failed
		}
		return out, nil
	}
	return v, nil
}

// policyVerdict is what the policy makes of one client text message.
type policyVerdict struct {
	out      []byte   // what goes upstream (the message itself when untouched)
	drop     bool     // send nothing (a stripped Update, or a malformed message under strip)
	refused  string   // non-empty: refuse the session; what the client is told
	stripped []string // paths removed, for the log
	// settings is a Settings message as it goes (out, parsed), for the
	// usage tag; nil for any other message.
	settings map[string]any
}

// check applies the policy to one client text message. Every message is
// parsed, whatever its bytes look like, and what goes upstream is always the
// parsed message encoded again: the decision is made on what Deepgram reads,
// never on raw bytes, which escapes, duplicate keys and the like could make
// say something else. A message that cannot be read one way only is refused
// (or dropped under strip).
func (p *settingsPolicy) check(msg []byte) policyVerdict {
	m, typ, err := parseClientMessage(msg)
	if err != nil {
		why := "message refused: " + err.Error()
		if p.refuse {
			return policyVerdict{refused: why}
		}
		return policyVerdict{drop: true, stripped: []string{"(" + why + ")"}}
	}
	var view any
	base := ""
	if typ == "Settings" {
		view = m
	} else if u, ok := updateFields[typ]; ok {
		if p.updates != nil && !p.updates[typ] {
			if p.refuse {
				return policyVerdict{refused: typ + " is not allowed"}
			}
			return policyVerdict{drop: true, stripped: []string{typ}}
		}
		view, base = m[u.field], u.path
	} else if p.messages[typ] {
		return p.encoded(m, nil)
	} else {
		// A type the policy neither governs nor lets pass; its name is
		// the client's, so it is bounded.
		if p.refuse {
			return policyVerdict{refused: "message type " + strconv.Quote(boundKey(typ)) + " is not allowed"}
		}
		return policyVerdict{drop: true, stripped: []string{"(message type " + boundKey(typ) + ")"}}
	}

	found := p.violations(view, base)
	paths := make([]string, len(found))
	for i, keys := range found {
		paths[i] = pathOf(base, keys)
	}
	if len(found) > 0 && p.refuse {
		return policyVerdict{refused: paths[0] + " is not allowed"}
	}
	for _, keys := range found {
		obj, ok := view.(map[string]any)
		if len(keys) == 0 || !ok {
			view = nil // the whole Update value is outside the allow list
			break
		}
		removeKeys(obj, keys)
	}
	if typ != "Settings" && len(found) > 0 {
		if obj, ok := view.(map[string]any); view == nil || ok && len(obj) == 0 {
			// Nothing the client may change is left: drop the update
			// rather than send the pinned values again.
			return policyVerdict{drop: true, stripped: paths}
		}
	}
	view = mergePinned(view, lookupPath(p.set, base))
	if typ != "Settings" {
		m[updateFields[typ].field] = view
		return p.encoded(m, paths)
	}
	v := p.encoded(view.(map[string]any), paths)
	v.settings = view.(map[string]any)
	return v
}

// encoded is the verdict that sends m, encoded again.
func (p *settingsPolicy) encoded(m map[string]any, stripped []string) policyVerdict {
	out, err := encodeJSON(m)
	if err != nil {
		// Only values the decoder made are in m: this cannot happen, and
		// nothing unjudged goes upstream if it does.
		return policyVerdict{drop: true, stripped: []string{"(message could not be encoded)"}}
	}
	return policyVerdict{out: out, stripped: stripped}
}

// violations lists, sorted, the places under v (the value at base: all of
// Settings, or an Update's part) that the allow list does not cover, each
// as its keys below base (none: v itself). "type" at the top of Settings
// always passes. A key that is empty or holds a dot is always a violation:
// no allow entry can name it, and as a dotted path it would read as another.
func (p *settingsPolicy) violations(v any, base string) [][]string {
	if p.allow == nil {
		return nil
	}
	var out [][]string
	var walk func(v any, keys []string, path string)
	walk = func(v any, keys []string, path string) {
		if path == "type" || p.allowed(path) {
			return
		}
		obj, ok := v.(map[string]any)
		if !ok || path != "" && !p.isAncestor(path) {
			if path != "" {
				out = append(out, keys)
			}
			return
		}
		for k, child := range obj {
			below := append(keys[:len(keys):len(keys)], k)
			if k == "" || strings.Contains(k, ".") {
				out = append(out, below)
				continue
			}
			walk(child, below, joinPath(path, k))
		}
	}
	walk(v, nil, base)
	slices.SortFunc(out, func(a, b []string) int { return strings.Compare(strings.Join(a, "."), strings.Join(b, ".")) })
	return out
}

// allowed reports whether path is an allowed path or lies under one.
func (p *settingsPolicy) allowed(path string) bool {
	for _, a := range p.allow {
		if path == a || strings.HasPrefix(path, a+".") {
			return true
		}
	}
	return false
}

// isAncestor reports whether an allowed path lies under path, so that the
// walk must look inside it.
func (p *settingsPolicy) isAncestor(path string) bool {
	for _, a := range p.allow {
		if strings.HasPrefix(a, path+".") {
			return true
		}
	}
	return false
}

// pathOf is keys below base as a dotted path, for the log and the client.
func pathOf(base string, keys []string) string {
	if base == "" {
		return strings.Join(keys, ".")
	}
	return strings.Join(append([]string{base}, keys...), ".")
}

func joinPath(base, key string) string {
	if base == "" {
		return key
	}
	return base + "." + key
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

// removeKeys deletes the value at keys and any object the removal leaves
// empty.
func removeKeys(m map[string]any, keys []string) {
	if len(keys) == 0 {
		return
	}
	if len(keys) == 1 {
		delete(m, keys[0])
		return
	}
	child, ok := m[keys[0]].(map[string]any)
	if !ok {
		return
	}
	removeKeys(child, keys[1:])
	if len(child) == 0 {
		delete(m, keys[0])
	}
}

// mergePinned lays the server's value over the client's: objects merge key
// by key, anything else (arrays included) is replaced whole. The server's
// values are copied, so no session can alter the policy.
func mergePinned(client, server any) any {
	if server == nil {
		return client
	}
	sobj, sok := server.(map[string]any)
	cobj, cok := client.(map[string]any)
	if !sok || !cok {
		return deepCopy(server)
	}
	for k, sv := range sobj {
		cobj[k] = mergePinned(cobj[k], sv)
	}
	return cobj
}

func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, c := range t {
			out[k] = deepCopy(c)
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

// secretValues is what the policy resolved from references, for the scrub;
// none without a policy.
func (p *settingsPolicy) secretValues() [][]byte {
	if p == nil {
		return nil
	}
	return p.secrets
}
