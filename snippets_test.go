package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

// The README's "Point your app at it" and docs/your-app.md show these files
// whole; each is run or parsed by a test below, so the documentation cannot
// show code that does not work.
var readmeSnippets = []string{
	"testdata/snippets/react/.npmrc",
	"testdata/snippets/react/VoiceAgent.jsx",
	"testdata/snippets/node-express/voice-token.mjs",
	"testdata/snippets/django/voice/views.py",
	"testdata/snippets/django/voice/urls.py",
}

// otherSecret signs tokens the relay (which has testJWTSecret) must refuse.
const otherSecret = "not-the-relay-secret-but-32-bytes-long!!"

// snippetMarker is the line before a fence that holds a file whole.
var snippetMarker = regexp.MustCompile("<!-- snippet: (\\S+) -->\n```[a-z]*\n")

// TestREADMESnippets: each `<!-- snippet: PATH -->` line in the README and
// in docs/ is followed by a fence holding exactly the file at PATH, and every
// file in readmeSnippets is shown so, in one of them.
func TestREADMESnippets(t *testing.T) {
	docs, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	var shown []string
	for _, doc := range append([]string{"README.md"}, docs...) {
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		text := string(raw)
		markers := snippetMarker.FindAllStringSubmatchIndex(text, -1)
		for _, m := range markers {
			path := text[m[2]:m[3]]
			shown = append(shown, path)
			body, _, ok := strings.Cut(text[m[1]:], "```\n")
			if !ok {
				t.Errorf("%s: the fence after the %s marker is not closed", doc, path)
				continue
			}
			want, err := os.ReadFile(filepath.FromSlash(path))
			if err != nil {
				t.Errorf("%s shows %s: %v", doc, path, err)
				continue
			}
			if body != string(want) {
				t.Errorf("%s's copy of %s differs from the file; paste the file back in.\n%s:\n%s\nfile:\n%s", doc, path, doc, body, want)
			}
		}
		if n := strings.Count(text, "<!-- snippet:"); n != len(markers) {
			t.Errorf("%s has %d snippet markers, %d of them right before a fence", doc, n, len(markers))
		}
	}
	for _, path := range readmeSnippets {
		if !slices.Contains(shown, path) {
			t.Errorf("neither the README nor docs/ shows %s (a <!-- snippet: %s --> line before its fence)", path, path)
		}
	}
}

// TestExpressTokenSnippet runs voice-token.mjs in an Express app (server.mjs)
// with express and jsonwebtoken as pinned in its package-lock.json: signed out
// it answers 401; signed in, its token opens a session through the relay
// exactly as the React component sends it. The same route with another
// secret mints tokens the relay refuses.
func TestExpressTokenSnippet(t *testing.T) {
	node := requireTool(t, "node")
	dir := filepath.Join("testdata", "snippets", "node-express")
	npmInstalled(t, dir)
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})

	base := startExpressSnippet(t, node, dir, testJWTSecret)
	if resp := getVoiceToken(t, base, ""); resp.status != http.StatusUnauthorized || resp.token != "" {
		t.Fatalf("signed out, the route answered %d with token %q; want 401 and none", resp.status, resp.token)
	}
	resp := getVoiceToken(t, base, "user-42")
	if resp.status != http.StatusOK || resp.cacheControl != "no-store" {
		t.Fatalf("signed in, the route answered %d (Cache-Control %q)", resp.status, resp.cacheControl)
	}
	expectMinted(t, resp.token, "user-42")
	expectAccepted(t, h, resp.token, "user-42")

	wrong := startExpressSnippet(t, node, dir, otherSecret)
	expectRefused(t, h, "token="+getVoiceToken(t, wrong, "user-42").token+"&service=agent", nil, 4401, "token invalid")
}

// startExpressSnippet starts server.mjs with secret as JWT_SECRET and returns
// its base URL; cleanup stops it.
func startExpressSnippet(t *testing.T, node, dir, secret string) string {
	t.Helper()
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "JWT_SECRET="+secret)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start server.mjs: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		s.Scan()
		line <- s.Text()
		_, _ = io.Copy(io.Discard, stdout) // until the process ends
	}()
	select {
	case l := <-line:
		port, ok := strings.CutPrefix(l, "listening ")
		if !ok {
			t.Fatalf("server.mjs printed %q, want \"listening PORT\"\n%s", l, stderr.String())
		}
		return "http://127.0.0.1:" + port
	case <-time.After(30 * time.Second):
		t.Fatalf("server.mjs did not listen\n%s", stderr.String())
	}
	return ""
}

type voiceTokenResponse struct {
	status       int
	cacheControl string
	token        string
}

// getVoiceToken asks the Express app for a token, as user (or signed out).
func getVoiceToken(t *testing.T, base, user string) voiceTokenResponse {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/api/voice-token", nil)
	if user != "" {
		req.Header.Set("X-Test-User", user)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /api/voice-token: %v", err)
	}
	defer resp.Body.Close()
	var body struct{ Token string }
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("GET /api/voice-token: %d %q: %v", resp.StatusCode, raw, err)
	}
	return voiceTokenResponse{resp.StatusCode, resp.Header.Get("Cache-Control"), body.Token}
}

// TestDjangoTokenSnippet runs views.py and urls.py in a Django project
// (mint_token.py: settings.configure, the session and auth middleware,
// Django's test client): signed out the view answers 401 JSON, as the
// Express route does; signed in, its token opens a session through the
// relay exactly as the React component sends it. The same view with another secret mints tokens
// the relay refuses. Needs Django and PyJWT (Debian: python3-django
// python3-jwt; PyPI is not used).
func TestDjangoTokenSnippet(t *testing.T) {
	python := requirePython(t, "django", "jwt")
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})

	got := runDjangoSnippet(t, python, testJWTSecret)
	if got.SignedOutStatus != http.StatusUnauthorized || got.Status != http.StatusOK {
		t.Fatalf("the view answered %d signed out (want 401, as the Express route) and %d signed in", got.SignedOutStatus, got.Status)
	}
	// The React snippet reads the error from the body, as it does Express's.
	var signedOut struct{ Error, Token string }
	if err := json.Unmarshal([]byte(got.SignedOutBody), &signedOut); err != nil || signedOut.Error == "" || signedOut.Token != "" ||
		got.SignedOutType != "application/json" || !strings.Contains(got.SignedOutCacheControl, "no-store") {
		t.Errorf("signed out, the view answered %s %q (Cache-Control %q); want JSON {\"error\": ...}, no token, no-store",
			got.SignedOutType, got.SignedOutBody, got.SignedOutCacheControl)
	}
	if !strings.Contains(got.CacheControl, "no-store") {
		t.Errorf("the token's Cache-Control is %q, want no-store", got.CacheControl)
	}
	expectMinted(t, got.Token, got.User)
	expectAccepted(t, h, got.Token, got.User)

	wrong := runDjangoSnippet(t, python, otherSecret)
	expectRefused(t, h, "token="+wrong.Token+"&service=agent", nil, 4401, "token invalid")
}

type djangoResult struct {
	User                  string
	SignedOutStatus       int    `json:"signed_out_status"`
	SignedOutType         string `json:"signed_out_type"`
	SignedOutBody         string `json:"signed_out_body"`
	SignedOutCacheControl string `json:"signed_out_cache_control"`
	Status                int
	CacheControl          string `json:"cache_control"`
	Token                 string
}

func runDjangoSnippet(t *testing.T, python, secret string) djangoResult {
	t.Helper()
	// -B: no __pycache__ left in the source tree.
	cmd := exec.Command(python, "-B", "mint_token.py")
	cmd.Dir = filepath.Join("testdata", "snippets", "django")
	cmd.Env = append(os.Environ(), "JWT_SECRET="+secret)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("mint_token.py: %v\n%s", err, stderr.Bytes())
	}
	var got djangoResult
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("mint_token.py printed %q: %v\n%s", out, err, stderr.Bytes())
	}
	return got
}

// requirePython finds a python3 that imports every module in mods: the one
// on PATH, else Debian's /usr/bin/python3 (a pyenv python on PATH lacks
// Debian's packages). A missing one is handled as requireTool handles a
// missing program (e2eMode).
func requirePython(t *testing.T, mods ...string) string {
	t.Helper()
	if e2eMode() == "off" {
		t.Skip("DGRELAY_E2E=off: end-to-end tests skipped")
	}
	var candidates []string
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3")
	for _, p := range candidates {
		if exec.Command(p, "-c", "import "+strings.Join(mods, ", ")).Run() == nil {
			return p
		}
	}
	msg := fmt.Sprintf("no python3 here imports %s (apt-get install python3-django python3-jwt)", strings.Join(mods, ", "))
	missingTool(t, msg)
	return ""
}

// expectMinted checks what the README promises of a minted token: HS256,
// the user as sub, and a 60 s lifetime.
func expectMinted(t *testing.T, token, sub string) {
	t.Helper()
	var c jwt.MapClaims
	tok, _, err := jwt.NewParser().ParseUnverified(token, &c)
	if err != nil {
		t.Fatalf("the snippet's token %q: %v", token, err)
	}
	iat, errI := c.GetIssuedAt()
	exp, errE := c.GetExpirationTime()
	if tok.Method.Alg() != "HS256" || c["sub"] != sub || errI != nil || errE != nil || iat == nil || exp == nil ||
		exp.Sub(iat.Time) != 60*time.Second {
		t.Fatalf("the snippet's token: alg %s, claims %v; want HS256, sub %q, exp 60 s after iat", tok.Method.Alg(), c, sub)
	}
}

// expectAccepted opens a session with token the way the React component does
// (?token=...&service=agent) and expects Deepgram's Welcome, with sub as the
// session's user.
func expectAccepted(t *testing.T, h *harness, token, sub string) {
	t.Helper()
	c := h.dial("token=" + token + "&service=agent")
	expectType(t, c, "Welcome")
	c.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
	h.settled()
	if user := sessionEnd(t, h.logs.String())["user"]; user != sub {
		t.Errorf("the session's user is %v, want %q", user, sub)
	}
}

// TestReactSnippetParses: the README's React component is valid JSX
// (esbuild, pinned in jsx-check's package-lock.json, parses it). The
// component package itself is not installed (GitHub Packages needs a token),
// so its props are not type-checked here.
func TestReactSnippetParses(t *testing.T) {
	requireTool(t, "node")
	dir := filepath.Join("testdata", "snippets", "jsx-check")
	npmInstalled(t, dir)
	// npm's link to esbuild's binary (or, where its install script did not
	// run, to the script that finds it).
	cmd := exec.Command(filepath.Join("node_modules", ".bin", "esbuild"),
		filepath.Join("..", "react", "VoiceAgent.jsx"), "--jsx=automatic", "--log-level=warning")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("esbuild cannot parse react/VoiceAgent.jsx: %v\n%s", err, out)
	}
	for _, want := range []string{"proxyAuthToken:", "proxyEndpoint:", "ref: voice", ".start()"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("the compiled snippet lacks %q:\n%s", want, out)
		}
	}
}
