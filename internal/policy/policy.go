// Package policy is the operator's say over what clients send in Settings
// and the Update messages (SETTINGS_POLICY): values the server pins,
// provider keys among them, resolved once from ${env:} and ${secret:}
// references; the paths a client may set; and which other messages pass on
// each service. Load reads a policy; Check judges one client text message
// and returns a Verdict: what goes on to Deepgram, or that nothing does, or
// that the session is refused.
package policy

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
)

// Policy is the operator's say over what clients send in Settings
// and the Update messages: values the server sets (provider keys included),
// the paths a client may set, and which updates and other messages it may
// send on each service. It is read once at start and never changes.
type Policy struct {
	set   map[string]any
	allow []string // nil: no allow list
	// pinned are the dotted paths whose value set replaces the client's
	// whole (anything but an object that merges key by key): a client
	// value there is overwritten, so it is no violation of the allow list.
	pinned  []string
	refuse  bool            // on_violation "refuse"; else "strip"
	updates map[string]bool // nil: every update allowed
	// messages are, per service, the other client message types that pass,
	// as they came but for the encoding; any type neither governed nor
	// listed is a violation, so that a message Deepgram adds later
	// (UpdateListen did) cannot carry settings past the policy.
	messages map[string]map[string]bool
	// agentIDs are the stored agent configurations a Settings may name as
	// its agent (a string where the object would be); none by default.
	agentIDs map[string]bool
	// secrets are the resolved ${secret:} and ${env:} values. They go to
	// Deepgram inside Settings and nowhere else: text frames coming back are
	// scrubbed of them.
	secrets [][]byte
}

// policyFile is SETTINGS_POLICY's JSON.
type policyFile struct {
	Set                   map[string]any  `json:"set"`
	Allow                 *[]string       `json:"allow"`
	OnViolation           string          `json:"on_violation"`
	Updates               map[string]bool `json:"updates"`
	Messages              *[]string       `json:"messages"`
	TranscriptionMessages *[]string       `json:"transcription_messages"`
	AgentIDs              []string        `json:"agent_ids"`
}

// defaultAgentMessages are the client messages of Deepgram's Voice Agent
// API that change no setting: they pass under any policy that does not list
// its own. From Deepgram's AsyncAPI spec (channel /v1/agent/converse,
// client messages) and its docs page voice-agent-inputs, which adds
// ForceEndTurn (push to talk). Close is no Deepgram message: Deepgram's Go
// SDK sends it when it stops; it carries no setting, so Deepgram answers it
// as it will.
var defaultAgentMessages = []string{"KeepAlive", "InjectUserMessage", "InjectAgentMessage", "FunctionCallResponse", "ForceEndTurn", "Close"}

// defaultTranscriptionMessages are the client messages of Deepgram's
// listen endpoints: v1's KeepAlive, Finalize and CloseStream, and Flux's
// (/v2/listen) Configure and CloseStream (AsyncAPI spec, ListenV1* and
// ListenV2* client messages). The React component sends CloseStream when it
// stops; without Finalize the last words never become final.
var defaultTranscriptionMessages = []string{"KeepAlive", "Finalize", "CloseStream", "Configure"}

// updateFields maps each Update message to the part of Settings it changes,
// so the same allow list and the same pinned values govern both.
var updateFields = map[string]struct{ field, path string }{
	"UpdatePrompt": {"prompt", "agent.think.prompt"},
	"UpdateSpeak":  {"speak", "agent.speak"},
	"UpdateThink":  {"think", "agent.think"},
	"UpdateListen": {"listen", "agent.listen"},
}

// Reference matches a ${env:NAME} or ${secret:NAME} reference in a
// policy's values: its submatches are the kind and the name.
var Reference = regexp.MustCompile(`\$\{(env|secret):([^}]*)\}`)

// Lookup returns the value a policy's reference names: kind "env" (an
// environment variable; "" when it is not set) or "secret" (a Secret
// Manager version's name). An error names the reference, never a value.
type Lookup func(ctx context.Context, kind, name string) (string, error)

// Load reads SETTINGS_POLICY (inline JSON or @path) and resolves its
// references with lookup (nil: none is set). An empty value is no policy.
func Load(ctx context.Context, value string, lookup Lookup) (*Policy, error) {
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
	p := &Policy{set: pf.Set, updates: pf.Updates}
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
	var err error
	p.messages = map[string]map[string]bool{}
	if p.messages["agent"], err = messageSet("messages", pf.Messages, defaultAgentMessages); err != nil {
		return nil, err
	}
	if p.messages["transcription"], err = messageSet("transcription_messages", pf.TranscriptionMessages, defaultTranscriptionMessages); err != nil {
		return nil, err
	}
	p.agentIDs = map[string]bool{}
	for _, id := range pf.AgentIDs {
		if id == "" {
			return nil, errors.New("SETTINGS_POLICY: agent_ids: an id is empty")
		}
		p.agentIDs[id] = true
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
	if _, ok := p.set["agent"].(string); ok {
		return nil, errors.New("SETTINGS_POLICY: set.agent must be an object: list stored agent configurations in agent_ids")
	}
	// p.set is a map: resolve changes it in place.
	var refs []policyRef
	if lookup == nil {
		lookup = func(_ context.Context, kind, name string) (string, error) {
			if kind == "secret" {
				return "", fmt.Errorf("secret %s: no secret store", name)
			}
			return "", nil
		}
	}
	if _, err := p.resolve(ctx, p.set, nil, lookup, &refs); err != nil {
		return nil, err
	}
	if err := checkEndpoints(p.set, nil); err != nil {
		return nil, err
	}
	if err := sealBlocks(p.set, refs); err != nil {
		return nil, err
	}
	p.pinned = pinnedPaths(p.set, "")
	return p, nil
}

// messageSet is the pass list of one service: the policy's own, or the
// default.
func messageSet(field string, listed *[]string, defaults []string) (map[string]bool, error) {
	names := defaults
	if listed != nil {
		names = *listed
	}
	set := map[string]bool{}
	for _, m := range names {
		if _, governed := updateFields[m]; governed || m == "Settings" || m == "" {
			return nil, fmt.Errorf("SETTINGS_POLICY: %s: %q is governed by the policy itself, or empty", field, m)
		}
		set[m] = true
	}
	return set, nil
}

// policyRef is where in set a ${env:} or ${secret:} reference was resolved:
// its steps, keys and array indices.
type policyRef []any

// resolve replaces ${env:NAME} and ${secret:projects/...} in every string
// under v, once, remembers the values as secrets and where each reference
// stood (refs); it returns v with them replaced. It walks arrays as well as
// objects, at any depth: agent.think.functions[].endpoint.headers is where a
// function's credentials go. An error names the reference, never a value.
func (p *Policy) resolve(ctx context.Context, v any, at policyRef, lookup Lookup, refs *[]policyRef) (any, error) {
	switch c := v.(type) {
	case map[string]any:
		for k, child := range c {
			out, err := p.resolve(ctx, child, append(at[:len(at):len(at)], k), lookup, refs)
			if err != nil {
				return nil, err
			}
			c[k] = out
		}
	case []any:
		for i, child := range c {
			out, err := p.resolve(ctx, child, append(at[:len(at):len(at)], i), lookup, refs)
			if err != nil {
				return nil, err
			}
			c[i] = out
		}
	case string:
		if !Reference.MatchString(c) {
			return c, nil
		}
		*refs = append(*refs, at)
		var failed error
		out := Reference.ReplaceAllStringFunc(c, func(ref string) string {
			m := Reference.FindStringSubmatch(ref)
			kind, name := m[1], m[2]
			val, err := lookup(ctx, kind, name)
			switch {
			case err != nil:
				failed = fmt.Errorf("SETTINGS_POLICY: %s: %w", displayPath("set", at), err)
			case kind == "env" && val == "":
				failed = fmt.Errorf("SETTINGS_POLICY: %s: ${env:%s} is not set", displayPath("set", at), name)
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

// displayPath writes steps below base as a.b[1].c, for errors and logs.
func displayPath(base string, steps []any) string {
	var b strings.Builder
	b.WriteString(base)
	for _, s := range steps {
		switch s := s.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s)
		case int:
			b.WriteString("[" + strconv.Itoa(s) + "]")
		}
	}
	return b.String()
}

// checkEndpoints refuses a policy that sets an endpoint without its url.
// A pinned endpoint replaces the client's whole (mergePinned), so its
// headers, where a provider's key goes, always travel to the url the
// operator chose: Deepgram sends an endpoint's headers to its url (AsyncAPI
// spec, ThinkSettingsV1Endpoint, SpeakSettingsV1Endpoint,
// ThinkSettingsV1FunctionsItemsEndpoint: "must include url field and
// headers object").
func checkEndpoints(v any, at policyRef) error {
	switch c := v.(type) {
	case map[string]any:
		for k, child := range c {
			here := append(at[:len(at):len(at)], k)
			if k == "endpoint" {
				ep, ok := child.(map[string]any)
				if url, _ := ep["url"].(string); !ok || url == "" {
					return fmt.Errorf("SETTINGS_POLICY: %s: an endpoint the policy sets must set its url too, "+
						"so that its headers go nowhere else", displayPath("set", here))
				}
			}
			if err := checkEndpoints(child, here); err != nil {
				return err
			}
		}
	case []any:
		for i, child := range c {
			if err := checkEndpoints(child, append(at[:len(at):len(at)], i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// sealBlocks binds every resolved reference to the address it goes to. A
// reference may stand only in an endpoint or a provider under agent.think,
// agent.speak or agent.listen (a function's endpoint among them): anywhere
// else (a prompt, a function's description, a greeting, the context, tags)
// its text would reach a model, whose words come back to the user in forms
// no scrub can know, or whatever provider the client names; such a policy
// is refused. One inside an endpoint goes to that endpoint's url, which
// checkEndpoints made sure the policy pins. One in a provider (its
// credentials) goes through the block's endpoint: if the policy pins no
// endpoint there, the client may not set one (the block is sealed:
// mergePinned removes the client's).
func sealBlocks(set map[string]any, refs []policyRef) error {
	for _, ref := range refs {
		inEndpoint, inProvider := slices.Contains(ref, any("endpoint")), slices.Contains(ref, any("provider"))
		if len(ref) < 2 || ref[0] != "agent" || (ref[1] != "think" && ref[1] != "speak" && ref[1] != "listen") || !inEndpoint && !inProvider {
			return fmt.Errorf("SETTINGS_POLICY: %s: a ${secret:} or ${env:} value may stand only in an endpoint or a provider "+
				"under agent.think, agent.speak or agent.listen, where the policy decides where it goes", displayPath("set", ref))
		}
		if inEndpoint || ref[1] == "listen" {
			continue // its url is pinned; or Deepgram's own speech-to-text
		}
		// The block: agent.think itself, or its element in an array.
		blockLen := 2
		if _, ok := ref[2].(int); ok {
			blockLen = 3
		}
		if block, ok := valueAt(set, ref[:blockLen]).(map[string]any); ok {
			if _, pinned := block["endpoint"]; !pinned {
				block["endpoint"] = sealed{}
			}
		}
	}
	return nil
}

// pinnedPaths lists the dotted paths under path where set replaces the
// client's value whole, as mergePinned lays it: every value but an object
// that merges key by key.
func pinnedPaths(set map[string]any, path string) []string {
	var out []string
	for k, v := range set {
		at := k
		if path != "" {
			at = path + "." + k
		}
		if obj, ok := v.(map[string]any); ok && !wholeKeys[k] {
			out = append(out, pinnedPaths(obj, at)...)
			continue
		}
		out = append(out, at)
	}
	return out
}

// valueAt is the value at steps under v, or nil.
func valueAt(v any, steps []any) any {
	for _, s := range steps {
		switch s := s.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[s]
		case int:
			a, ok := v.([]any)
			if !ok || s >= len(a) {
				return nil
			}
			v = a[s]
		}
	}
	return v
}

// SecretValues is what the policy resolved from references, for the scrub;
// none without a policy.
func (p *Policy) SecretValues() [][]byte {
	if p == nil {
		return nil
	}
	return p.secrets
}
