package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/chromedp/chromedp"
)

// sessionResult is what page.html's runSession reports.
type sessionResult struct {
	Opened             bool
	Protocol           string
	Texts              []map[string]any
	AudioOK, AudioBad  int
	InjectEchoedAsText bool
	Error              bool
	CloseCode          int
	CloseReason        string
}

// TestBrowser drives headless Chromium (Debian's package) through the relay
// with a page that behaves like the React component's socket.
func TestBrowser(t *testing.T) {
	chromium := requireTool(t, "chromium")
	page := http.FileServer(http.Dir("testdata/e2e/browser"))
	pageSrv := httptest.NewServer(page)
	defer pageSrv.Close()
	pageHost := strings.TrimPrefix(pageSrv.URL, "http://")
	// The same page from an origin the relay does not allow.
	_, pagePort, _ := net.SplitHostPort(pageHost)
	strangerURL := "http://localhost:" + pagePort + "/page.html"

	h := newHarness(t, authEnv(map[string]string{"ALLOWED_ORIGINS": pageHost}), fakedeepgram.Options{APIKey: testAPIKey})

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.Flag("headless", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	defer cancelTimeout()

	settings := map[string]any{"type": "Settings", "audio": map[string]any{"input": map[string]any{"encoding": "linear16", "sample_rate": 16000}}}
	run := func(t *testing.T, pageURL, query string, protocols []string) sessionResult {
		t.Helper()
		arg := map[string]any{"url": h.wsURL + "?" + query, "protocols": protocols, "settings": settings, "audioFrames": 20, "frameBytes": 8192}
		if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
			t.Fatalf("chromium: %v", err)
		}
		res, err := chromedp.Run(ctx, chromedp.Evaluate[sessionResult]("window.runSession("+mustJSON(t, arg)+")", chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		return res
	}
	ok := pageSrv.URL + "/page.html"
	good := userToken(t, "browser-user")

	expectRelayed := func(t *testing.T, r sessionResult) {
		t.Helper()
		if !r.Opened || r.AudioOK != 20 || r.AudioBad != 0 || !r.InjectEchoedAsText || r.CloseCode != 1000 {
			t.Fatalf("session: %+v", r)
		}
		if len(r.Texts) < 2 || r.Texts[0]["type"] != "Welcome" || r.Texts[1]["type"] != "SettingsApplied" {
			t.Fatalf("text events %v", r.Texts)
		}
	}
	t.Run("token in the query", func(t *testing.T) {
		expectRelayed(t, run(t, ok, "service=agent&token="+good, nil))
	})
	t.Run("bearer subprotocol", func(t *testing.T) {
		r := run(t, ok, "service=agent", []string{"bearer", good})
		expectRelayed(t, r)
		if r.Protocol != "bearer" {
			t.Errorf("selected subprotocol %q", r.Protocol)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		r := run(t, ok, "token="+hs256(t, testJWTSecret, claims{sub: "u", exp: -time.Hour}), nil)
		if r.CloseCode != 4401 || r.CloseReason != "token expired" {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("upstream failure", func(t *testing.T) {
		h.fake.SetOptions(fakedeepgram.Options{APIKey: "not-the-relay-key"})
		defer h.fake.SetOptions(fakedeepgram.Options{APIKey: testAPIKey})
		r := run(t, ok, "token="+good, nil)
		if len(r.Texts) != 1 || r.Texts[0]["type"] != "Error" || r.Texts[0]["code"] != "UPSTREAM_AUTH" || r.CloseCode != 1014 {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("disallowed origin", func(t *testing.T) {
		before := len(h.fake.Handshakes())
		r := run(t, strangerURL, "token="+good, nil)
		if r.Opened || !r.Error || r.CloseCode != 1006 {
			t.Fatalf("%+v", r)
		}
		if len(h.fake.Handshakes()) != before {
			t.Fatal("a disallowed origin reached upstream")
		}
	})
	if os.Getenv("CI") == "" {
		t.Log("browser tests ran against", chromium)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
