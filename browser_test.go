package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
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
	// Events: the text messages and the close, in the order the page saw
	// them ("message Error TOKEN_EXPIRED", "close 4401").
	Events []string
}

// TestBrowser drives headless Chromium (Debian's package) through the relay
// with a page that behaves like the React component's socket. For the endings
// the relay decides (an expired token, Deepgram vanishing, the drain) the
// page must read the Error frame with its code before the close event.
func TestBrowser(t *testing.T) {
	chromium := requireTool(t, "chromium")
	page := http.FileServer(http.Dir("testdata/e2e/browser"))
	pageSrv := httptest.NewServer(page)
	defer pageSrv.Close()
	pageHost := strings.TrimPrefix(pageSrv.URL, "http://")
	// The same page from an origin the relay does not allow.
	_, pagePort, _ := net.SplitHostPort(pageHost)
	strangerURL := "http://localhost:" + pagePort + "/page.html"
	ok := pageSrv.URL + "/page.html"

	// Strict Deepgram, with its audio echoed so that the page can check
	// every byte it sent comes back as it was.
	h := newHarness(t, authEnv(map[string]string{"ALLOWED_ORIGINS": pageHost}), fakedeepgram.Options{APIKey: testAPIKey, EchoAudio: true})

	ctx := chromiumContext(t, chromium, 90*time.Second)

	settings := map[string]any{"type": "Settings", "audio": map[string]any{"input": map[string]any{"encoding": "linear16", "sample_rate": 16000}}, "agent": map[string]any{}}
	// evaluate runs expression in the page, awaiting the promise it gives.
	evaluate := func(t *testing.T, expression string) sessionResult {
		t.Helper()
		res, err := chromedp.Run(ctx, chromedp.Evaluate[sessionResult](expression, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		return res
	}
	navigate := func(t *testing.T, pageURL string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
			t.Fatalf("chromium: %v", err)
		}
	}
	run := func(t *testing.T, pageURL, query string, protocols []string) sessionResult {
		t.Helper()
		arg := map[string]any{"url": h.wsURL + "?" + query, "protocols": protocols, "settings": settings, "audioFrames": 20, "frameBytes": 8192}
		navigate(t, pageURL)
		return evaluate(t, "window.runSession("+mustJSON(t, arg)+")")
	}
	// held opens a session that sends Settings, then send (if any) once
	// SettingsApplied arrives, and leaves the ending to the relay; during
	// runs once SettingsApplied has arrived, before the session's result is
	// awaited.
	held := func(t *testing.T, wsURL, query, send string, during func()) sessionResult {
		t.Helper()
		arg := map[string]any{"url": wsURL + "?" + query, "settings": settings, "hold": map[string]any{"send": send}}
		navigate(t, ok)
		evaluate(t, "window.startSession("+mustJSON(t, arg)+"), window.applied.then(() => ({}))")
		if during != nil {
			during()
		}
		return evaluate(t, "window.session")
	}
	good := userToken(t, "browser-user")

	// expectErrorThenClose: the page read exactly one Error frame, with
	// errorCode and description (the close's reason when ""), and then,
	// with nothing between them, the close with code and reason.
	expectErrorThenClose := func(t *testing.T, r sessionResult, code int, reason, errorCode, description string) {
		t.Helper()
		want := []string{"message Error " + errorCode, fmt.Sprintf("close %d", code)}
		errorFrames := 0
		for _, e := range r.Events {
			if strings.HasPrefix(e, "message Error") {
				errorFrames++
			}
		}
		if len(r.Events) < 2 || !slices.Equal(r.Events[len(r.Events)-2:], want) || errorFrames != 1 {
			t.Fatalf("the page saw %q; want them to end %q, with one Error", r.Events, want)
		}
		if r.CloseCode != code || r.CloseReason != reason {
			t.Fatalf("close %d %q, want %d %q", r.CloseCode, r.CloseReason, code, reason)
		}
		if description == "" {
			description = reason
		}
		if last := r.Texts[len(r.Texts)-1]; last["description"] != description {
			t.Fatalf("Error frame %v: its description is not %q", last, description)
		}
	}

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
		expectErrorThenClose(t, r, 4401, "token expired", "TOKEN_EXPIRED", "")
		if len(r.Events) != 2 {
			t.Fatalf("events %q: only the Error and the close", r.Events)
		}
	})
	// stream runs the page's streamSession against wsURL with the query.
	stream := func(t *testing.T, wsURL, query string, arg map[string]any) streamResult {
		t.Helper()
		arg["url"], arg["settings"], arg["frameBytes"], arg["intervalMs"] = wsURL+"?"+query, settings, 640, 20
		navigate(t, ok)
		start := time.Now()
		res, err := chromedp.Run(ctx, chromedp.Evaluate[streamResult]("window.streamSession("+mustJSON(t, arg)+")", chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		t.Logf("the page saw %q in %v; frames back: %d before the move, %d after, %d bad, %d lost",
			res.Events, time.Since(start).Round(time.Millisecond), res.Before, res.After, res.Bad, res.Lost)
		return res
	}
	t.Run("upstream vanishes: the call moves", func(t *testing.T) {
		before := len(h.fake.Handshakes())
		r := stream(t, h.wsURL, "token="+good, map[string]any{"trigger": `{"type":"Fake.Vanish"}`, "triggerAfter": 5, "after": 10})
		expectStreamedAcrossMove(t, r, 10)
		if n := len(h.fake.Handshakes()) - before; n != 2 {
			t.Fatalf("%d connections to Deepgram, want the first and the move's", n)
		}
	})
	t.Run("upstream vanishes: the move gives up", func(t *testing.T) {
		// Once the call is up, Deepgram refuses every new connection: the
		// move cannot take it over.
		defer h.fake.SetOptions(fakedeepgram.Options{APIKey: testAPIKey, EchoAudio: true})
		r := held(t, h.wsURL, "token="+good, "", func() {
			h.fake.SetOptions(fakedeepgram.Options{APIKey: testAPIKey, EchoAudio: true, RejectStatus: 503})
			evaluate(t, `window.sessionSocket.send('{"type":"Fake.Vanish"}'), ({})`)
		})
		t.Logf("the page saw %q", r.Events)
		expectErrorThenClose(t, r, 1014, "upstream went away", "UPSTREAM_GONE", moveFailedDescription)
		if r.Events[0] != "message Welcome" {
			t.Fatalf("events %q: the session did not run first", r.Events)
		}
	})
	t.Run("audio across a move", func(t *testing.T) {
		// Deepgram's session-length warning a second in; never quiet
		// (the audio is echoed), the call is moved anyway.
		shortMoves(t, 100*time.Millisecond, moveSoonForce)
		hm := newHarness(t, authEnv(map[string]string{"ALLOWED_ORIGINS": pageHost}), moveSoon)
		r := stream(t, hm.wsURL, "token="+good, map[string]any{"after": 25})
		expectStreamedAcrossMove(t, r, 25)
		if r.Lost != 0 {
			t.Errorf("%d frames lost in a move Deepgram asked for", r.Lost)
		}
		waitForLog(t, hm.logs, `"reason":"session_length"`)
	})
	t.Run("drain", func(t *testing.T) {
		// A relay of its own: a drained one takes no new sessions.
		hd := newHarness(t, authEnv(map[string]string{"ALLOWED_ORIGINS": pageHost}), fakedeepgram.Options{APIKey: testAPIKey, EchoAudio: true})
		r := held(t, hd.wsURL, "token="+good, "", func() { hd.relay.drain(50 * time.Millisecond) })
		expectErrorThenClose(t, r, 1012, "service restart", "SERVICE_RESTART", "")
		if r.Events[0] != "message Welcome" {
			t.Fatalf("events %q: the session did not run first", r.Events)
		}
	})
	t.Run("upstream failure", func(t *testing.T) {
		h.fake.SetOptions(fakedeepgram.Options{APIKey: "not-the-relay-key"})
		defer h.fake.SetOptions(fakedeepgram.Options{APIKey: testAPIKey, EchoAudio: true})
		r := run(t, ok, "token="+good, nil)
		if len(r.Texts) != 1 || r.Texts[0]["type"] != "Error" || r.Texts[0]["code"] != "UPSTREAM_AUTH" || r.CloseCode != 1014 {
			t.Fatalf("%+v", r)
		}
		if want := []string{"message Error UPSTREAM_AUTH", "close 1014"}; !slices.Equal(r.Events, want) {
			t.Fatalf("events %q, want %q", r.Events, want)
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

// chromiumContext starts headless Chromium for one test, with more flags if
// given, and returns a context for chromedp bounded by timeout. Cleanup
// stops the browser.
func chromiumContext(t *testing.T, chromium string, timeout time.Duration, flags ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
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
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(opts, flags...)...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		cancelAlloc()
	})
	return ctx
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
