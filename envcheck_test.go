package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"dgrelay/internal/fakedeepgram"
)

// TestUnknownVariablesWarned runs the built binary with variables meant for
// it but misspelt, among the ones platforms and shells set: each misspelt
// one gets one start warning naming the variable it likely meant, the others
// none, no value reaches the log, and the relay starts.
func TestUnknownVariablesWarned(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	const value = "do-not-log-this-value-7f3a"
	misspelt := map[string]string{
		"ALLOWED_ORIGIN":       "ALLOWED_ORIGINS",       // a letter short
		"allowed_origins":      "ALLOWED_ORIGINS",       // case
		"MAX_SESSION_PER_USER": "MAX_SESSIONS_PER_USER", // a letter short inside
		"LOG_LEVLE":            "LOG_LEVEL",             // two letters swapped
		"JWKS_URI":             "JWKS_URL",
		"DEEPGRAM_KEY":         "DEEPGRAM_API_KEY", // a word short
		"REDIS_PREFIX":         "REDIS_KEY_PREFIX",
		"DGRELAY_TRY_PAGE":     "TRY_PAGE", // the relay's name as a prefix
		"DGRELAY_SOMETHING":    "",         // the prefix, nothing like a known one
	}
	unrelated := []string{"HOME", "HOSTNAME", "HOST", "TERM", "LANG", "TZ", "USER", "K_SERVICE", "K_REVISION", "K_CONFIGURATION",
		"FLY_APP_NAME", "FLY_REGION", "FLY_MACHINE_ID", "PRIMARY_REGION", "GOOGLE_APPLICATION_CREDENTIALS", "GOMAXPROCS", "GODEBUG",
		"HTTPS_PROXY", "NO_PROXY", "http_proxy", "LISTEN_PORT", "REDIS_HOST", "DATABASE_URL", "NODE_ENV", "SECRET_KEY",
		// Kubernetes' links for a Service named dgrelay.
		"DGRELAY_SERVICE_HOST", "DGRELAY_SERVICE_PORT", "DGRELAY_PORT_8080_TCP", "DGRELAY_PORT_8080_TCP_ADDR"}
	var env []string
	for name := range misspelt {
		env = append(env, name+"="+value)
	}
	for _, name := range unrelated {
		env = append(env, name+"="+value)
	}
	env = append(env, "DGRELAY_PORT=tcp://10.0.0.7:8080")
	p := startProcess(t, fake, env...) // the warnings come before the start line
	out := p.logs.String()
	if strings.Contains(out, value) || strings.Contains(out, "10.0.0.7") {
		t.Errorf("a value reached the log:\n%s", out)
	}
	warned := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		var entry struct{ Severity, Message, Variable, Likely string }
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Variable == "" || !strings.Contains(entry.Message, "not a dgrelay variable") {
			continue
		}
		if entry.Severity != "WARNING" || !strings.HasPrefix(entry.Message, entry.Variable+" ") {
			t.Errorf("the warning for %s: %s", entry.Variable, line)
		}
		if _, twice := warned[entry.Variable]; twice {
			t.Errorf("%s warned twice", entry.Variable)
		}
		warned[entry.Variable] = entry.Likely
		if entry.Likely != "" && !strings.Contains(entry.Message, "did you mean "+entry.Likely+"?") {
			t.Errorf("the warning does not name %s: %s", entry.Likely, entry.Message)
		}
	}
	for name, likely := range misspelt {
		if got, ok := warned[name]; !ok || got != likely {
			t.Errorf("%s: warned %v, likely %q; want %q", name, ok, got, likely)
		}
		delete(warned, name)
	}
	for name := range warned {
		t.Errorf("%s warned, which is not the relay's", name)
	}
}

// TestUnknownVariableWhenStartFails: the warning comes too when the start
// fails, as a misspelling may be why (DEEPGRAM_KEY: no key).
func TestUnknownVariableWhenStartFails(t *testing.T) {
	cmd := exec.Command(builtBinary(t))
	cmd.Env = []string{"DEEPGRAM_KEY=" + testAPIKey, "ALLOW_UNAUTHENTICATED=true", "PORT=" + freePort(t), "METRICS_PORT=0"}
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "DEEPGRAM_KEY is not a dgrelay variable and is ignored: did you mean DEEPGRAM_API_KEY?") ||
		!strings.Contains(string(out), "no Deepgram key") || strings.Contains(string(out), testAPIKey) {
		t.Errorf("the failed start does not point at the misspelling, or shows the key:\n%s", out)
	}
}

// TestEditDistance: the optimal string alignment distance on a few pairs.
func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"PORT", "PORT", 0}, {"PORT", "", 4}, {"ALLOWED_ORIGIN", "ALLOWED_ORIGINS", 1},
		{"LOG_LEVLE", "LOG_LEVEL", 1}, {"LISTEN_PORT", "LISTEN_HOST", 2}, {"HOST", "PORT", 2}, {"CA", "ABC", 3},
	} {
		if got := editDistance(c.a, c.b); got != c.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

// FuzzEditDistance: whatever names the environment holds, the distance is a
// metric's: zero only between equal names, symmetric, at most the longer
// length (within the 64-byte cut), and the check does not panic.
func FuzzEditDistance(f *testing.F) {
	f.Add("ALLOWED_ORIGIN", "ALLOWED_ORIGINS")
	f.Add("", strings.Repeat("X", 64))
	f.Add(strings.Repeat("AB", 40), strings.Repeat("BA", 40))
	f.Add("\xff\xfe", "é")
	f.Fuzz(func(t *testing.T, a, b string) {
		d := editDistance(a, b)
		cutA, cutB := a[:min(len(a), 64)], b[:min(len(b), 64)]
		if d != editDistance(b, a) || (d == 0) != (cutA == cutB) || d > max(len(cutA), len(cutB)) || d < 0 {
			t.Fatalf("editDistance(%q, %q) = %d", a, b, d)
		}
		_ = closest(a, []string{"PORT", "ALLOWED_ORIGINS", "DEEPGRAM_API_KEY"})
	})
}
