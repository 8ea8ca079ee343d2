package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// toolInstall says how to get each program an end-to-end test needs, for
// the line a skipped test prints.
var toolInstall = map[string]string{
	"chromium":     "apt-get install chromium",
	"node":         "apt-get install nodejs npm",
	"npm":          "apt-get install nodejs npm",
	"redis-server": "apt-get install redis-server",
	"python3":      "apt-get install python3",
}

// e2eMode is DGRELAY_E2E, the gate of the end-to-end tests (the tests that
// drive programs we did not write: Chromium, Node with Deepgram's SDKs,
// redis-server, Python with Django), as coder/websocket gates its Autobahn
// run with an environment variable:
//
//	unset    each runs when its programs are installed, and is skipped,
//	         saying what to install, when one is missing
//	require  a missing program fails the test: .ci/run sets it, so that CI
//	         cannot pass by skipping (CI=true does the same)
//	off      every end-to-end test is skipped, for a quick run of the rest
func e2eMode() string {
	mode := os.Getenv("DGRELAY_E2E")
	if mode == "" && os.Getenv("CI") != "" {
		return "require"
	}
	return mode
}

// requireTool finds a program an end-to-end test needs, as e2eMode says.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	if e2eMode() == "off" {
		t.Skip("DGRELAY_E2E=off: end-to-end tests skipped")
	}
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	how := toolInstall[name]
	if how == "" {
		how = "install it"
	}
	missingTool(t, fmt.Sprintf("%s is not installed (%s)", name, how))
	return ""
}

// missingTool fails t where the end-to-end tests are required, and skips it
// with why otherwise. A skip shows in `go test -v` output; `go test ./...`
// shows only a passing package's "ok", which is why .ci/run requires them
// and the README says so.
func missingTool(t testing.TB, why string) {
	t.Helper()
	if e2eMode() == "require" {
		t.Fatalf("%s; .ci/run installs it", why)
	}
	t.Skipf("%s: install it, or run .ci/run, to run this test", why)
}

// npmInstalled makes sure dir's pinned packages are installed, from its
// package-lock.json. A finished `npm ci` leaves a stamp holding the lock
// file's hash; a node_modules without it (an install cut short) or from
// another lock file is removed and installed again.
func npmInstalled(t *testing.T, dir string) {
	t.Helper()
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	modules := filepath.Join(dir, "node_modules")
	stamp := filepath.Join(modules, ".dgrelay-npm-ci")
	if got, err := os.ReadFile(stamp); err == nil && string(got) == want {
		return
	}
	npm := requireTool(t, "npm")
	if err := os.RemoveAll(modules); err != nil {
		t.Fatalf("remove a partial node_modules: %v", err)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
	if err := os.WriteFile(stamp, []byte(want), 0o644); err != nil {
		t.Fatalf("stamp node_modules: %v", err)
	}
}
