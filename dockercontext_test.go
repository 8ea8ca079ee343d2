package main

import (
	"cmp"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The Docker image is built from what .dockerignore leaves of this
// directory; these tests hold that to what the binary embeds, beside
// deploy_test.go's checks of the Dockerfile itself.

// TestDockerContextHoldsEmbeddedFiles: every file a //go:embed line names
// reaches the image's build (COPY . . of what .dockerignore leaves), so that
// a new ignore pattern cannot drop the try page from the image: a missing
// embed is a build error there, which no test here would see.
func TestDockerContextHoldsEmbeddedFiles(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^COPY \. \.$`).Match(raw) {
		t.Fatal("the Dockerfile no longer copies the build context whole; check that it copies the embedded files")
	}
	ignoreFile, err := os.ReadFile(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	ignore := strings.Split(string(ignoreFile), "\n")
	// The matcher reads the real file as Docker does, or it proves nothing.
	for path, want := range map[string]bool{"main.go": false, "trypage.go": false, "bench/main.go": true,
		"internal/wspipe/frame_test.go": true, "testdata/e2e/browser/page.html": true, "README.md": true, ".git/HEAD": true} {
		if dockerIgnored(ignore, path) != want {
			t.Fatalf("the .dockerignore matcher says %s is ignored: %v, want %v", path, !want, want)
		}
	}
	var embedded []string
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && (path == ".git" || d.Name() == "testdata" || d.Name() == "node_modules") {
			return cmp.Or(err, filepath.SkipDir)
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		for _, line := range strings.Split(string(src), "\n") {
			patterns, ok := strings.CutPrefix(line, "//go:embed ")
			for _, pattern := range strings.Fields(patterns) {
				if !ok {
					break
				}
				files := filesUnder(t, filepath.Join(filepath.Dir(path), strings.Trim(pattern, "\"`")))
				if len(files) == 0 {
					t.Errorf("%s: //go:embed %s names no file", path, pattern)
				}
				embedded = append(embedded, files...)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(embedded, "trypage/index.html") {
		t.Errorf("the try page is not among the embedded files %q", embedded)
	}
	for _, f := range embedded {
		if dockerIgnored(ignore, f) {
			t.Errorf(".dockerignore leaves %s, an embedded file, out of the image's build", f)
		}
	}
}

// filesUnder is every file that pattern names or that lies under a
// directory it names.
func filesUnder(t *testing.T, pattern string) []string {
	t.Helper()
	matches, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatalf("//go:embed %s: %v", pattern, err)
	}
	var files []string
	for _, m := range matches {
		err := filepath.WalkDir(m, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, filepath.ToSlash(path))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// dockerIgnored reports whether Docker's .dockerignore rules leave path out
// of the build context: each line a pattern (filepath.Match syntax, with **
// for any number of directories) from the context's root, matching the path
// or a directory above it; "!" brings a path back; the last match decides.
func dockerIgnored(lines []string, path string) bool {
	ignored := false
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keep := strings.HasPrefix(line, "!")
		pattern := filepath.ToSlash(filepath.Clean(strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/")))
		re := "^"
		for i := 0; i < len(pattern); i++ {
			switch c := pattern[i]; {
			case strings.HasPrefix(pattern[i:], "**/"):
				re, i = re+"(.*/)?", i+2
			case strings.HasPrefix(pattern[i:], "**"):
				re, i = re+".*", i+1
			case c == '*':
				re += "[^/]*"
			case c == '?':
				re += "[^/]"
			case c == '\\' && i+1 < len(pattern):
				re, i = re+regexp.QuoteMeta(pattern[i+1:i+2]), i+1
			default:
				re += regexp.QuoteMeta(string(c))
			}
		}
		// A pattern that names a directory takes everything under it.
		if regexp.MustCompile(re + "(/.*)?$").MatchString(path) {
			ignored = !keep
		}
	}
	return ignored
}
