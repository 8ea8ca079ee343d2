package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/chromedp/chromedp"
)

// Real clients across a move (docs/continuation.md): each keeps its audio
// flowing while the relay carries its call to a new Deepgram connection, and
// sees no close and no second Welcome or SettingsApplied, only the relay's
// Warning SESSION_CONTINUED. The move is the one Deepgram's session-length
// warning asks for: the fake warns moveSoonWarning after each connection
// opens, echoes the client's audio (so Deepgram is never quiet) and the
// relay makes the move moveSoonForce after the warning anyway.

// moveSoon is the fake Deepgram of these tests: audio echoed, the warning a
// second after each connection opens, and its end (Error, then a close) at
// four seconds, so that a client whose call is not moved ends soon.
var moveSoon = fakedeepgram.Options{EchoAudio: true, MaxSession: 4 * time.Second, SessionWarning: 3 * time.Second}

// moveSoonForce is how long after the warning the relay moves a call that is
// never quiet.
const moveSoonForce = 300 * time.Millisecond

// expectOnce fails t unless each of once is in events exactly one time, and
// every Warning the client saw is the relay's SESSION_CONTINUED (Deepgram's
// own length warning is the relay's to answer).
func expectOnce(t *testing.T, client string, events []string, once ...string) {
	t.Helper()
	for _, e := range once {
		if n := countOf(events, e); n != 1 {
			t.Errorf("%s saw %q %d times: %q", client, e, n, events)
		}
	}
	for _, e := range events {
		if strings.HasPrefix(e, "message Warning") && e != "message Warning "+continuedCode {
			t.Errorf("%s saw %q", client, e)
		}
		if strings.HasPrefix(e, "message Error") {
			t.Errorf("%s saw %q", client, e)
		}
	}
}

// TestDeepgramSDKAudioAcrossMove: @deepgram/sdk streams numbered 20 ms frames
// (agent.mjs, stream mode) through a move asked by Deepgram's session-length
// warning; every frame that comes back is one it sent, in order, and frames
// keep coming back after the SESSION_CONTINUED Warning.
func TestDeepgramSDKAudioAcrossMove(t *testing.T) {
	requireTool(t, "node")
	shortMoves(t, 100*time.Millisecond, moveSoonForce)
	h := newHarness(t, authEnv(nil), moveSoon)
	got := runSDKAgentWith(t, h, "stream", userToken(t, "sdk-user"), []string{"STREAM_AFTER=25"}, nil)
	t.Logf("the SDK saw %q; frames echoed %d before the move, %d after, %d bad, last sent %d", got.Events, got.Audio.Before, got.Audio.After, got.Audio.Bad, got.Audio.Last)
	if got.Audio.Moves < 1 || got.Audio.Before == 0 || got.Audio.After < 25 || got.Audio.Bad != 0 {
		t.Fatalf("audio %+v: want frames before and after a move, none bad", got.Audio)
	}
	expectOnce(t, "the SDK", got.Events, "message Welcome", "message SettingsApplied")
	if got.Close == nil || got.Close.Code != 1000 || got.Error != nil {
		t.Fatalf("the SDK's close %+v, Error %+v: want its own close 1000 only", got.Close, got.Error)
	}
	if n := len(h.fake.Handshakes()); n != 1+got.Audio.Moves {
		t.Errorf("%d connections to Deepgram for %d moves", n, got.Audio.Moves)
	}
	waitForLog(t, h.logs, `"reason":"session_length"`)
}

// browserAgentMove is what page.html's runMove reports.
type browserAgentMove struct {
	Events []string
	// Counts are the audio messages each way at the end, AtMove those at
	// the SESSION_CONTINUED Warning (nil: none came).
	Counts, AtMove *struct{ AudioUp, AudioDown int }
	CloseCode      *int
	Why            string
}

// browserAgentAudioAcrossMove is TestBrowserAgentThroughRelay's subtest
// (its Chromium, ctx, with a fake microphone, on its page server): Deepgram's
// <deepgram-agent> web component (@deepgram/browser-agent): its microphone's
// audio goes on up, and the echoed audio comes down, after a move asked by
// Deepgram's session-length warning; its only sign of the move is the
// SESSION_CONTINUED Warning, and its stop ends the call with 1000.
func browserAgentAudioAcrossMove(t *testing.T, ctx context.Context, pageURL string) {
	pageHost := strings.TrimPrefix(pageURL, "http://")
	shortMoves(t, 100*time.Millisecond, moveSoonForce)
	h := newHarness(t, authEnv(map[string]string{"ALLOWED_ORIGINS": pageHost}), moveSoon)
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL+"/page.html")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool]("typeof window.runMove === 'function'")); err != nil {
		t.Fatalf("chromium: the page did not load the package: %v", err)
	}
	const after = 5 // audio messages each way after the move: ScriptProcessor frames of 4096 samples
	arg := map[string]any{"url": "ws" + strings.TrimPrefix(h.srv.URL, "http") + "/v1/agent/converse",
		"token": userToken(t, "browser-agent-user"), "config": realClientSettings(t, "browser-agent"), "after": after}
	start := time.Now()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[browserAgentMove]("window.runMove("+mustJSON(t, arg)+")", chromedp.EvalAwaitPromise))
	t.Logf("the call took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	t.Logf("the page saw %q; audio messages at the move %+v, at the end %+v", got.Events, got.AtMove, got.Counts)
	if got.AtMove == nil || got.Why != "closed" || got.CloseCode == nil || *got.CloseCode != 1000 {
		t.Fatalf("the page saw %q (%s): want a move, then the stop's close 1000\nrelay logs:\n%s", got.Events, got.Why, h.logs.String())
	}
	if got.Counts.AudioUp < got.AtMove.AudioUp+after || got.Counts.AudioDown < got.AtMove.AudioDown+after || got.AtMove.AudioDown == 0 {
		t.Fatalf("audio messages at the move %+v, at the end %+v: want them flowing before and after", got.AtMove, got.Counts)
	}
	expectOnce(t, "the page", got.Events, "open", "message Welcome", "message SettingsApplied")
	if slices.ContainsFunc(got.Events, func(e string) bool {
		return strings.HasPrefix(e, "failure") || strings.HasPrefix(e, "close") && e != "close 1000"
	}) {
		t.Errorf("the page saw %q", got.Events)
	}
	waitForLog(t, h.logs, `"reason":"session_length"`)
}

// streamResult is what the React component's stand-in page
// (testdata/e2e/browser/page.html) reports of its streamSession.
type streamResult struct {
	// Events: the text messages, runs of audio ("audio 12") and the close.
	Events []string
	// Before and After count the frames back before and after the first
	// move; Bad those not sent or out of order; Lost those that never
	// came back; Moves the SESSION_CONTINUED Warnings.
	Before, After, Bad, Lost, Moves int
	CloseCode                       int
}

// expectStreamedAcrossMove: the page's audio came back before the move and
// after frames after it, none bad; it saw one Welcome and one
// SettingsApplied, no Error, and only its own close.
func expectStreamedAcrossMove(t *testing.T, r streamResult, after int) {
	t.Helper()
	if r.Moves < 1 || r.Before == 0 || r.After < after || r.Bad != 0 || r.CloseCode != 1000 {
		t.Fatalf("the page saw %q: want audio back before and after a move, none bad, and its own close 1000", r.Events)
	}
	expectOnce(t, "the page", r.Events, "message Welcome", "message SettingsApplied", "close 1000")
}
