package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runBinary runs the built relay with args and returns its stdout, stderr
// and exit code. Its environment would stop a start (PORT=0), so a relay
// that ignored its arguments exits 1 rather than serving; and it is killed
// after 20 s.
func runBinary(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	bin := builtBinary(t) // before the clock starts: the first build is slow
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"DEEPGRAM_API_KEY=" + testAPIKey, "ALLOW_UNAUTHENTICATED=true", "PORT=0", "METRICS_PORT=0"}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("dgrelay %q: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// TestHelp: --help and -h print, and exit 0 without starting, every
// variable the Config struct reads, with the default its tag gives and the
// meaning docs/configuration.md's table gives (its first clause).
func TestHelp(t *testing.T) {
	vars := configVariables()
	if len(vars) < 30 {
		t.Fatalf("the Config struct yields %d variables", len(vars))
	}
	meanings := configurationMeanings(configurationDoc)
	for _, arg := range []string{"--help", "-h"} {
		out, errOut, code := runBinary(t, arg)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, usageLine+"\n") {
			t.Fatalf("dgrelay %s: exit %d, stderr %q, stdout:\n%s", arg, code, errOut, out)
		}
		for _, v := range vars {
			def := "(no default)"
			if v.def != "" {
				def = "default " + v.def
			}
			m := meanings[v.name]
			if m == "" || strings.Contains(m, "`") || !strings.Contains(out, "\n  "+v.name+"  "+def+"\n      "+m+"\n") {
				t.Errorf("dgrelay %s: %s is not shown with %s and its meaning %q", arg, v.name, def, m)
			}
		}
		if strings.Contains(out, "dgrelay started") || strings.Contains(out, testAPIKey) {
			t.Errorf("dgrelay %s started the relay or showed the key:\n%s", arg, out)
		}
	}
	// The meaning is the table's own, cut where it goes into detail.
	if got := meanings["LISTEN_HOST"]; !strings.HasPrefix(got, "where PORT listens: empty is every interface") || strings.Contains(got, ";") {
		t.Errorf("LISTEN_HOST's meaning: %q", got)
	}
}

// TestVersion: --version prints the version the build was stamped with
// (main.version) and exits 0.
func TestVersion(t *testing.T) {
	out, errOut, code := runBinary(t, "--version")
	if code != 0 || errOut != "" || out != "dgrelay dev\n" {
		t.Errorf("dgrelay --version: exit %d, stdout %q, stderr %q; want \"dgrelay dev\" (unstamped)", code, out, errOut)
	}
	old := version
	version = "v1.2.3"
	defer func() { version = old }()
	var stdout, stderr bytes.Buffer
	if code, exit := command([]string{"-version"}, &stdout, &stderr); !exit || code != 0 || stdout.String() != "dgrelay v1.2.3\n" {
		t.Errorf("-version with version v1.2.3: %d %v %q", code, exit, stdout.String())
	}
}

// TestBadArguments: any other argument, or more than one, is exit 2 with
// the usage line on stderr, and the relay does not start; an argument that
// is not an option (a pasted key) is not echoed.
func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{{"serve"}, {"--bogus"}, {"--help", "extra"}, {"-h", "-h"}, {"--version", "--help"}, {testAPIKey}, {"--port=8080"}} {
		out, errOut, code := runBinary(t, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "dgrelay: unexpected argument") || !strings.Contains(errOut, usageLine) {
			t.Errorf("dgrelay %q: exit %d, stdout %q, stderr %q; want 2 and the usage line", args, code, out, errOut)
		}
		if strings.Contains(errOut, testAPIKey) || strings.Contains(errOut, "8080") || strings.Contains(errOut, "serve") {
			t.Errorf("dgrelay %q: stderr echoes the argument: %q", args, errOut)
		}
	}
	if _, errOut, _ := runBinary(t, "--bogus"); !strings.Contains(errOut, `"--bogus"`) {
		t.Errorf("an unknown option is not named: %q", errOut)
	}
}
