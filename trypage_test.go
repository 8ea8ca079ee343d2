package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/chromedp/chromedp"
	"github.com/sethvargo/go-envconfig"
)

// fetch sends one request to the harness's relay and returns the response
// with its body read.
func fetch(t *testing.T, h *harness, method, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, string(body)
}

// TestTryPageOff: without TRY_PAGE the relay serves no page, not even its
// scripts.
func TestTryPageOff(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	for _, path := range []string{"/try", "/try/app.js", "/try/capture.js", "/try/style.css"} {
		if resp, _ := fetch(t, h, http.MethodGet, path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
}

// TestTryPageServed: with TRY_PAGE=true the page and its files come with a
// CSP that allows this origin alone, nosniff and no-store; the page loads
// nothing from elsewhere, knows the WebSocket route, and asks for a token
// only when the relay requires one.
func TestTryPageServed(t *testing.T) {
	h := newHarness(t, map[string]string{"TRY_PAGE": "true", "PROXY_PATH": "/agent/ws"}, fakedeepgram.Options{})
	resp, page := fetch(t, h, http.MethodGet, "/try")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /try: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// Every file the page names is its own and is served, as its type.
	refs := regexp.MustCompile(`(?i)\b(?:src|href)="([^"]*)"`).FindAllStringSubmatch(page, -1)
	if len(refs) != 3 {
		t.Errorf("the page names %d files, want its two scripts and its stylesheet: %q", len(refs), refs)
	}
	wantType := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	paths := []string{"/try"}
	for _, ref := range refs {
		path := ref[1]
		if !strings.HasPrefix(path, tryPath+"/") {
			t.Errorf("the page loads %q, which is not its own", path)
			continue
		}
		paths = append(paths, path)
		resp, body := fetch(t, h, http.MethodGet, path)
		ext := path[strings.LastIndexByte(path, '.'):]
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != wantType[ext] || body == "" {
			t.Errorf("GET %s: %d %q, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
	}
	if regexp.MustCompile(`(?i)<script>|<script[^>]*>[^<]|\son[a-z]+=|style=`).MatchString(page) {
		t.Error("the page has inline script or style, which its CSP forbids")
	}
	for _, path := range paths {
		resp, _ := fetch(t, h, http.MethodGet, path)
		for header, want := range map[string]string{
			"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
			"X-Content-Type-Options":  "nosniff",
			"Cache-Control":           "no-store",
		} {
			if got := resp.Header.Get(header); got != want {
				t.Errorf("GET %s: %s %q, want %q", path, header, got, want)
			}
		}
		head, body := fetch(t, h, http.MethodHead, path)
		if head.StatusCode != http.StatusOK || body != "" || head.ContentLength != resp.ContentLength {
			t.Errorf("HEAD %s: %d, %d bytes, length %d (GET: %d)", path, head.StatusCode, len(body), head.ContentLength, resp.ContentLength)
		}
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			if resp, _ := fetch(t, h, method, path); resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(resp.Header.Get("Allow"), "GET") {
				t.Errorf("%s %s: %d, Allow %q; want 405 allowing GET", method, path, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	}
	if !strings.Contains(page, `data-proxy-path="/agent/ws"`) || !strings.Contains(page, `data-auth="false"`) {
		t.Error("the page does not carry the route and the authentication it is served with")
	}
	if strings.Contains(page, `id="token"`) {
		t.Error("a token field on a relay without authentication")
	}

	authed := newHarness(t, authEnv(map[string]string{"TRY_PAGE": "true"}), fakedeepgram.Options{})
	_, page = fetch(t, authed, http.MethodGet, "/try")
	if !regexp.MustCompile(`<input id="token" type="password" autocomplete="off"`).MatchString(page) || !strings.Contains(page, `data-auth="true"`) {
		t.Error("no password field for the token on a relay that requires one")
	}
	if strings.Contains(page, testJWTSecret) || strings.Contains(page, testAPIKey) {
		t.Error("the page holds a secret")
	}
}

// tryView is what the try page shows, read from its DOM.
type tryView struct {
	State         string
	SentBytes     int
	PlayedMs      int
	PlayedBuffers int
	Conversation  []string
	Events        []struct{ Class, Code, Text string }
	// HTML is the page's markup as it stands, to look for a token in.
	HTML string
}

const tryViewJS = `(() => {
  const $ = (id) => document.getElementById(id);
  return {
    state: $("state").dataset.state,
    sentBytes: +$("sent").dataset.bytes,
    playedMs: +$("played").dataset.ms,
    playedBuffers: +$("played").dataset.buffers,
    conversation: [...document.querySelectorAll("#conversation li")].map((li) => li.textContent),
    events: [...document.querySelectorAll("#events li")].map((li) => ({class: li.className, code: li.dataset.code || "", text: li.textContent})),
    html: document.documentElement.outerHTML,
  };
})()`

// event returns the first event line of class with code, if any.
func (v tryView) event(class, code string) (string, bool) {
	for _, e := range v.Events {
		if e.Class == class && e.Code == code {
			return e.Text, true
		}
	}
	return "", false
}

// tryBrowser drives the try page in one Chromium.
type tryBrowser struct {
	t   *testing.T
	ctx context.Context
}

func (b tryBrowser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("chromium: %v", err)
	}
}

func (b tryBrowser) view() tryView {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[tryView](tryViewJS))
	if err != nil {
		b.t.Fatalf("chromium: %v", err)
	}
	return v
}

// waitView waits until the page shows what cond wants.
func (b tryBrowser) waitView(what string, cond func(tryView) bool) tryView {
	b.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := b.view()
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			v.HTML = ""
			b.t.Fatalf("the page never showed %s: %+v", what, v)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTryPageInBrowser loads /try in headless Chromium with a fake
// microphone (a beep) against the fake Deepgram in voice mode, and clicks
// Start: the microphone's audio reaches Deepgram, Deepgram's audio is
// played, its conversation text and an Error frame's code are shown, and
// after Stop the close code. With authentication on, a token typed in goes
// as the bearer subprotocol and is accepted; a wrong one shows 4401.
func TestTryPageInBrowser(t *testing.T) {
	chromium := requireTool(t, "chromium")
	b := tryBrowser{t, chromiumContext(t, chromium, 2*time.Minute,
		chromedp.Flag("use-fake-device-for-media-stream", true),
		chromedp.Flag("use-fake-ui-for-media-stream", true),
		chromedp.WindowSize(1100, 900))}

	t.Run("talk", func(t *testing.T) {
		b.t = t
		h := newHarness(t, map[string]string{"TRY_PAGE": "true"}, fakedeepgram.Options{APIKey: testAPIKey, Voice: true})
		b.do(chromedp.Navigate(h.srv.URL+"/try"), chromedp.Click(chromedp.ID("start")))
		b.waitView("agent audio played and the agent's words", func(v tryView) bool {
			return v.State == "live" && v.PlayedBuffers > 0 && v.PlayedMs > 0 &&
				slices.ContainsFunc(v.Conversation, func(s string) bool { return strings.Contains(s, "Sure, I can help with that.") })
		})
		// The fake microphone beeps once a second; between beeps it is
		// silent, so a peak says the page sent the microphone, not zeros.
		waitFor(t, func() bool { return h.fake.Heard().Peak > 1000 })
		if heard := h.fake.Heard(); heard.Bytes%2 != 0 || heard.Messages == 0 {
			t.Errorf("Deepgram heard %+v: whole linear16 samples expected", heard)
		}
		var settings struct {
			Type  string
			Audio struct {
				Input struct {
					Encoding   string
					SampleRate int `json:"sample_rate"`
				}
				Output struct {
					Encoding, Container string
					SampleRate          int `json:"sample_rate"`
				}
			}
			Agent struct {
				Think struct{ Provider struct{ Type, Model string } }
				Speak struct{ Provider struct{ Type, Model string } }
			}
		}
		texts := h.fake.Texts()
		if len(texts) == 0 || json.Unmarshal(texts[0], &settings) != nil || settings.Type != "Settings" ||
			settings.Audio.Input.Encoding != "linear16" || settings.Audio.Input.SampleRate != 16000 ||
			settings.Audio.Output.Encoding != "linear16" || settings.Audio.Output.SampleRate != 24000 || settings.Audio.Output.Container != "none" ||
			settings.Agent.Think.Provider.Type != "open_ai" || !strings.HasPrefix(settings.Agent.Speak.Provider.Model, "aura-2") {
			t.Fatalf("Deepgram's first message was not the page's Settings: %q", texts)
		}
		waitFor(t, func() bool {
			return slices.ContainsFunc(h.fake.Texts(), func(m []byte) bool { return string(m) == `{"type":"KeepAlive"}` })
		})

		if n := h.fake.Tell([]byte(`{"type":"Error","code":"TEST_ERROR","description":"an Error from the fake Deepgram"}`)); n != 1 {
			t.Fatalf("the fake told %d sessions", n)
		}
		v := b.waitView("the Error frame", func(v tryView) bool { _, ok := v.event("error", "TEST_ERROR"); return ok })
		if text, _ := v.event("error", "TEST_ERROR"); !strings.Contains(text, "an Error from the fake Deepgram") {
			t.Errorf("the Error line %q lacks its description", text)
		}

		shot, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		checkScreenshot(t, shot)

		b.do(chromedp.Click(chromedp.ID("stop")))
		v = b.waitView("the close", func(v tryView) bool { _, ok := v.event("close", "1000"); return ok && v.State == "closed" })
		t.Logf("Deepgram heard %+v; the page played %d ms in %d buffers", h.fake.Heard(), v.PlayedMs, v.PlayedBuffers)
		if c := h.upstreamClosed(); c.Code != 1000 {
			t.Errorf("Deepgram saw close %d, want the page's 1000", c.Code)
		}
	})

	t.Run("token", func(t *testing.T) {
		b.t = t
		h := newHarness(t, authEnv(map[string]string{"TRY_PAGE": "true"}), fakedeepgram.Options{APIKey: testAPIKey, Voice: true})
		token := userToken(t, "try-user")
		b.do(chromedp.Navigate(h.srv.URL+"/try"),
			chromedp.SendKeys(chromedp.ID("token"), token),
			chromedp.Click(chromedp.ID("start")))
		v := b.waitView("a live session", func(v tryView) bool { return v.State == "live" && v.PlayedBuffers > 0 })
		if !slices.ContainsFunc(v.Events, func(e struct{ Class, Code, Text string }) bool {
			return e.Text == "connected; token sent as the bearer subprotocol"
		}) {
			t.Errorf("the relay did not select the bearer subprotocol: %+v", v.Events)
		}
		if strings.Contains(v.HTML, token) {
			t.Error("the page shows the token")
		}
		for _, hs := range h.fake.Handshakes() {
			if strings.Contains(hs.RawQuery, "token") {
				t.Errorf("the token reached Deepgram's query: %s", hs.RawQuery)
			}
		}
		b.do(chromedp.Click(chromedp.ID("stop")))
		b.waitView("the close", func(v tryView) bool { _, ok := v.event("close", "1000"); return ok })
		h.settled()
		if end := sessionEnd(t, h.logs.String()); end["user"] != "try-user" {
			t.Errorf("the session ran as %v, want the token's user", end["user"])
		}
	})

	t.Run("wrong token", func(t *testing.T) {
		b.t = t
		h := newHarness(t, authEnv(map[string]string{"TRY_PAGE": "true"}), fakedeepgram.Options{APIKey: testAPIKey, Voice: true})
		b.do(chromedp.Navigate(h.srv.URL+"/try"),
			chromedp.SendKeys(chromedp.ID("token"), "not-a-token"),
			chromedp.Click(chromedp.ID("start")))
		v := b.waitView("the refusal", func(v tryView) bool { _, ok := v.event("close", "4401"); return ok && v.State == "closed" })
		if _, ok := v.event("error", "TOKEN_INVALID"); !ok {
			t.Errorf("no TOKEN_INVALID Error frame shown: %+v", v.Events)
		}
		if len(h.fake.Handshakes()) != 0 {
			t.Error("a refused token reached Deepgram")
		}
	})
}

// checkScreenshot decodes a PNG of the page and fails a blank one: a page
// that rendered shows text (many colours from anti-aliasing) over much of
// itself. The PNG is kept with go test -artifacts.
func checkScreenshot(t *testing.T, shot []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "try.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	counts := map[color.RGBA]int{}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			counts[color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)]++
		}
	}
	background := 0
	for _, n := range counts {
		background = max(background, n)
	}
	total := bounds.Dx() * bounds.Dy()
	if other := total - background; len(counts) < 64 || other < total/20 {
		t.Errorf("the screenshot looks blank: %d colours, %d of %d pixels off the background", len(counts), other, total)
	}
}

// TestTryPageStart: the relay started by run serves the page, gives its
// address in its start line, and warns when anyone could use it: with the page on and
// no authentication.
func TestTryPageStart(t *testing.T) {
	for _, authed := range []bool{false, true} {
		port := freePort(t)
		env := map[string]string{"PORT": port, "METRICS_PORT": "0", "DEEPGRAM_API_KEY": testAPIKey, "TRY_PAGE": "true", "ALLOW_UNAUTHENTICATED": "true"}
		if authed {
			env["ALLOW_UNAUTHENTICATED"], env["JWT_SECRET"] = "false", testJWTSecret
		}
		logs := &lockedBuffer{}
		sig := make(chan os.Signal, 1)
		done := make(chan int)
		go func() { done <- run(context.Background(), envconfig.MapLookuper(env), logs, sig) }()
		waitForLog(t, logs, "dgrelay started")
		status := get(t, "http://127.0.0.1:"+port+"/try", nil).StatusCode
		sig <- syscall.SIGTERM
		if code := <-done; code != 0 {
			t.Fatalf("exit code %d", code)
		}
		out := logs.String()
		// The address to open, on the port the relay holds; localhost, where
		// browsers give an http:// page the microphone.
		if status != http.StatusOK || !strings.Contains(out, `"try_page":"http://localhost:`+port+`/try"`) {
			t.Errorf("authentication %v: GET /try %d; start line:\n%s", authed, status, out)
		}
		if warned := strings.Contains(out, `"severity":"WARNING","message":"TRY_PAGE=true without authentication`); warned == authed {
			t.Errorf("authentication %v: warned %v:\n%s", authed, warned, out)
		}
	}
}
