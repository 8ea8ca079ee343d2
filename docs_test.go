package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// The README is the door; docs/ holds the manual, a file per topic. The
// tests that hold documentation to the code read the file each table lives
// in: the configuration table (TestReadmeConfigTable) docs/configuration.md,
// the answers (TestEndingsInREADME, TestHTTPRefusalsInDocs)
// docs/answers.md, the metrics (TestReadmeMetricsTable) docs/operations.md,
// the Redis setup (TestReadmeRedisSetup) docs/limits.md, and the snippets
// (TestREADMESnippets) the README and every docs/ file.

// docFiles are the Markdown files whose links TestDocLinks follows.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs/*.md: %v", err)
	}
	return append([]string{"README.md", "BENCHMARKS.md"}, files...)
}

// heading is one Markdown heading: its level (the count of #) and its text.
type heading struct {
	level int
	text  string
	line  int // index into the file's lines
}

// headingLine is an ATX heading outside a code fence.
var headingLine = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)

// headings lists md's headings, skipping lines inside ``` fences (a shell
// comment is not a heading).
func headings(md string) []heading {
	var out []heading
	fenced := false
	for i, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if m := headingLine.FindStringSubmatch(line); m != nil && !fenced {
			out = append(out, heading{len(m[1]), m[2], i})
		}
	}
	return out
}

// docSection is the text under the heading titled title in the Markdown
// file path (at any level), up to the next heading of the same or a higher
// level: its subsections included.
func docSection(t *testing.T, path, title string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.FromSlash(path))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	hs := headings(string(raw))
	for i, h := range hs {
		if h.text != title {
			continue
		}
		end := len(lines)
		for _, next := range hs[i+1:] {
			if next.level <= h.level {
				end = next.line
				break
			}
		}
		return strings.Join(lines[h.line+1:end], "\n")
	}
	t.Fatalf("%s has no %q heading", path, title)
	return ""
}

// anchor is GitHub's id for a heading: lower case, every character but
// letters, digits, spaces, hyphens and underscores dropped, spaces made
// hyphens.
func anchor(text string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors are the ids of md's headings; a repeated id gets -1, -2, ... as
// on GitHub.
func anchors(md string) []string {
	var out []string
	seen := map[string]int{}
	for _, h := range headings(md) {
		id := anchor(h.text)
		if n := seen[id]; n > 0 {
			seen[id]++
			id += "-" + strconv.Itoa(n)
		} else {
			seen[id] = 1
		}
		out = append(out, id)
	}
	return out
}

var (
	// mdLink is an inline link or image: [text](target "title").
	mdLink = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	// codeSpan is inline code, where brackets are not links.
	codeSpan = regexp.MustCompile("`+[^`]*`+")
)

// links lists the targets of md's inline links outside code.
func links(md string) []string {
	var out []string
	fenced := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(codeSpan.ReplaceAllString(line, ""), -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// TestDocLinks: every relative link in the README, BENCHMARKS.md and docs/
// names a file that exists, and a #fragment names a heading in it.
func TestDocLinks(t *testing.T) {
	checked := 0
	for _, file := range docFiles(t) {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range links(string(raw)) {
			if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, fragment, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.Join(filepath.Dir(file), filepath.FromSlash(path))
			}
			info, err := os.Stat(dest)
			if err != nil {
				t.Errorf("%s: link %s: no file %s", file, target, dest)
				continue
			}
			if fragment == "" {
				continue
			}
			if info.IsDir() || !strings.HasSuffix(dest, ".md") {
				t.Errorf("%s: link %s: a #fragment into %s, which is not a Markdown file", file, target, dest)
				continue
			}
			body, err := os.ReadFile(dest)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(anchors(string(body)), fragment) {
				t.Errorf("%s: link %s: %s has no heading #%s (it has %v)", file, target, dest, fragment, anchors(string(body)))
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d relative links found: is the link reader broken?", checked)
	}
}

// TestDocAnchors: the heading ids follow GitHub's rules.
func TestDocAnchors(t *testing.T) {
	for text, want := range map[string]string{
		"Answers: HTTP statuses and close codes":               "answers-http-statuses-and-close-codes",
		"Limits across instances (Redis)":                      "limits-across-instances-redis",
		"Why the relay's own host passes only on this machine": "why-the-relays-own-host-passes-only-on-this-machine",
		"Deploy to Fly.io":                                     "deploy-to-flyio",
		"The `ref` and user_id":                                "the-ref-and-user_id",
	} {
		if got := anchor(text); got != want {
			t.Errorf("anchor(%q) = %q, want %q", text, got, want)
		}
	}
	if got := anchors("# A\n```sh\n# not a heading\n```\n## A\n## A\n"); !slices.Equal(got, []string{"a", "a-1", "a-2"}) {
		t.Errorf("anchors = %v, want a, a-1, a-2", got)
	}
}

// TestREADMELength: the README stays the door, not the manual.
func TestREADMELength(t *testing.T) {
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "\n"); n > 250 {
		t.Errorf("README.md has %d lines; keep it at 250 or fewer and move the rest into docs/", n)
	}
}
