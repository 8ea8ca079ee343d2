package main

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// cloudBuildExpand is what Cloud Build makes of s before a step runs: each
// ${_NAME} (and ${PROJECT_ID}) is its substitution, values from with before
// the file's defaults; then $$, its escape, is a literal $.
func cloudBuildExpand(cb cloudBuild, s string, with map[string]string) string {
	s = regexp.MustCompile(`\$\{(\w+)\}`).ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := with[m[2:len(m)-1]]; ok {
			return v
		}
		return cb.substitute(m)
	})
	return strings.ReplaceAll(s, "$$", "$")
}

// TestCloudBuildCheckStep runs cloudbuild.yaml's first step, as Cloud Build
// would (its substitutions expanded into its env, its script under bash),
// for each way of naming users' tokens: without _JWT_SECRET or _JWKS_URL,
// with both, and with _JWKS_URL but no _JWT_AUDIENCE, it fails, saying
// which to set, before the build; with one of them it passes. No step
// starts before it (waitFor "-").
func TestCloudBuildCheckStep(t *testing.T) {
	bash := requireTool(t, "bash")
	raw, err := os.ReadFile("cloudbuild.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cb cloudBuild
	if err := yaml.Unmarshal(raw, &cb); err != nil {
		t.Fatal(err)
	}
	if len(cb.Steps) < 2 || cb.Steps[0].ID != "check" || cb.Steps[1].ID != "build" {
		t.Fatalf("the first steps are not check, then build")
	}
	for _, s := range cb.Steps[1:] {
		for _, w := range s.WaitFor {
			if w == "-" {
				t.Errorf("step %s starts at once (waitFor -), before the check", s.ID)
			}
		}
	}
	check := cb.Steps[0]
	if check.Entrypoint != "bash" || len(check.Args) != 2 || check.Args[0] != "-c" {
		t.Fatalf("the check step is not bash -c SCRIPT: %s %q", check.Entrypoint, check.Args)
	}
	const version = "projects/p/secrets/jwt-secret/versions/latest"
	const jwks = "https://tenant.example.com/.well-known/jwks.json"
	for _, c := range []struct {
		name string
		with map[string]string
		ok   bool
		says string
	}{
		{"neither", nil, false, "set _JWT_SECRET (the Secret Manager version of your HS256 secret) or _JWKS_URL"},
		{"JWT secret", map[string]string{"_JWT_SECRET": version}, true, "users' tokens: JWT_SECRET"},
		{"JWKS", map[string]string{"_JWKS_URL": jwks, "_JWT_AUDIENCE": "dgrelay"}, true, "users' tokens: JWKS_URL"},
		{"JWKS without audience", map[string]string{"_JWKS_URL": jwks}, false, "_JWKS_URL needs _JWT_AUDIENCE"},
		{"both", map[string]string{"_JWT_SECRET": version, "_JWKS_URL": jwks, "_JWT_AUDIENCE": "dgrelay"}, false, "not both"},
		// A value is data, never script.
		{"quoted", map[string]string{"_JWT_SECRET": `"; exit 0; "`, "_JWKS_URL": "$(false)", "_JWT_AUDIENCE": "x"}, false, "not both"},
	} {
		cmd := exec.Command(bash, "-c", cloudBuildExpand(cb, check.Args[1], c.with))
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		for _, e := range check.Env {
			cmd.Env = append(cmd.Env, cloudBuildExpand(cb, e, c.with))
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if (err == nil) != c.ok || !strings.Contains(out.String(), c.says) {
			t.Errorf("%s: %v, %q; want ok %v and %q", c.name, err, out.String(), c.ok, c.says)
		}
	}
}
