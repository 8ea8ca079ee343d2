package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// requireTool finds a program the end-to-end tests need. Locally a missing
// one skips the test and says so on the terminal; in CI (CI=true) it fails,
// so CI cannot pass by skipping.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	how := toolInstall[name]
	if how == "" {
		how = "install it"
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (%s); .ci/run installs it", name, how)
	}
	skipLoudly(t, fmt.Sprintf("%s is not installed: %s, then run the tests again", name, how))
	return ""
}

// skipLoudly skips t with a line that shows in `go test ./...`'s default
// output. That output holds only a passing package's "ok" line: the test
// binary's own output is dropped. So the line also goes to the stderr of
// the go command that started this binary (its parent), which is the
// user's terminal or CI log. A skipped run is kept out of go's test cache,
// or the next run would print "(cached)" and nothing else.
func skipLoudly(t testing.TB, why string) {
	t.Helper()
	line := fmt.Sprintf("SKIP %s: %s\n", t.Name(), why)
	if w, err := goCommandStderr(); err == nil {
		_, _ = w.WriteString(line)
		_ = w.Close()
	}
	uncacheable()
	t.Skip(strings.TrimSuffix(line, "\n"))
}

// goCommandStderr opens the stderr of this process's parent when that
// parent is the go command (as under `go test`); under `go test -c` or a
// debugger there is nothing to open and the skip stays in -v output.
func goCommandStderr() (*os.File, error) {
	ppid := strconv.Itoa(os.Getppid())
	comm, err := os.ReadFile(filepath.Join("/proc", ppid, "comm"))
	if err != nil || strings.TrimSpace(string(comm)) != "go" {
		return nil, fmt.Errorf("parent is not the go command")
	}
	return os.OpenFile(filepath.Join("/proc", ppid, "fd", "2"), os.O_WRONLY|os.O_APPEND, 0)
}

// uncacheable opens a file written a moment ago: the go command does not
// cache a test result that read a file of the module modified within the
// last seconds (files outside the module do not count). The file is
// git-ignored.
func uncacheable() {
	f := filepath.Join("testdata", ".skipped")
	if err := os.WriteFile(f, []byte("skipped\n"), 0o600); err != nil {
		return
	}
	_, _ = os.ReadFile(f)
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
