package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// readyz returns the relay's /readyz status and body.
func readyz(t *testing.T, h *harness) (int, string) {
	t.Helper()
	resp, err := http.Get(h.srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestOutageHeldNotRediscovered: while Deepgram answers 503, 30 attempts
// from one client make a handful of dials, not 60 (UPSTREAM_RETRIES=1): the
// first is told in band, the rest get 503 with Retry-After before the
// upgrade, at once; /readyz stays 200 and says the agent endpoint is down,
// and so does dgrelay_upstream_down. When Deepgram is back, a session gets
// through within a few seconds and the state is up again.
func TestOutageHeldNotRediscovered(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"UPSTREAM_RETRIES": "1"}), fakedeepgram.Options{APIKey: testAPIKey, RejectStatus: http.StatusServiceUnavailable})
	tok := "token=" + userToken(t, "outage-user")
	c, _ := attempt(t, h, tok)
	if c == nil {
		t.Fatal("the first attempt was not upgraded")
	}
	typ, data := read(t, c)
	if typ != websocket.MessageText || !strings.Contains(string(data), "UPSTREAM_REJECTED") {
		t.Fatalf("first attempt: %s, want UPSTREAM_REJECTED in band", data)
	}
	start := time.Now()
	for i := range 29 {
		expectBeforeUpgrade(t, h, tok, http.StatusServiceUnavailable)
		if i%10 == 9 {
			time.Sleep(outageMaxHold / 4) // a client backing off; probes come due
		}
	}
	took := time.Since(start)
	dials := len(h.fake.Handshakes())
	t.Logf("30 attempts in %v made %d dials", took.Round(time.Millisecond), dials)
	if dials > 5 {
		t.Errorf("30 attempts during an outage made %d dials, want at most 5", dials)
	}
	status, body := readyz(t, h)
	if status != http.StatusOK || !strings.Contains(body, "upstream agent: down") || !strings.Contains(body, "upstream transcription: up") {
		t.Errorf("/readyz during the outage: %d %q", status, body)
	}
	if m := scrapeHandler(t, h); !strings.Contains(m, `dgrelay_upstream_down{service="agent"} 1`) {
		t.Errorf("metrics lack the outage:\n%s", grepLines(m, "upstream_down"))
	}
	// Another user is told in band once, without a dial.
	before := len(h.fake.Handshakes())
	other := "token=" + userToken(t, "other-user")
	if c, _ := attempt(t, h, other); c != nil {
		expectErrorThenClose(t, c, refuseUpstreamUnavailable)
	} else if dials := len(h.fake.Handshakes()); dials > before+1 {
		t.Errorf("another user's attempt made %d dials", dials-before)
	}

	h.fake.SetOptions(fakedeepgram.Options{APIKey: testAPIKey})
	back := time.Now()
	for {
		if c, _ := attempt(t, h, other); c != nil {
			applySettings(t, c)
			c.Close(websocket.StatusNormalClosure, "")
			break
		}
		if time.Since(back) > outageMaxHold+2*time.Second {
			t.Fatalf("no session within %v of Deepgram's return", time.Since(back))
		}
		time.Sleep(250 * time.Millisecond) // a client's pace, faster than the SDKs'
	}
	t.Logf("a session got through %v after Deepgram was back", time.Since(back).Round(time.Millisecond))
	if _, body := readyz(t, h); !strings.Contains(body, "upstream agent: up") {
		t.Errorf("/readyz after the outage: %q", body)
	}
	waitForLog(t, h.logs, `"upstream back"`)
	if n := strings.Count(h.logs.String(), `"upstream down`); n != 1 {
		t.Errorf("%d upstream down lines, want 1", n)
	}
}

// TestOutageUnreachable: with Deepgram's address refusing connections, the
// same: a handful of dials for 30 attempts, each answered at once.
func TestOutageUnreachable(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"UPSTREAM_RETRIES": "1",
		"DEEPGRAM_AGENT_URL": "ws://127.0.0.1:" + freePort(t) + "/v1/agent/converse"}), fakedeepgram.Options{APIKey: testAPIKey})
	tok := "token=" + userToken(t, "unreachable-user")
	c, _ := attempt(t, h, tok)
	if c == nil {
		t.Fatal("the first attempt was not upgraded")
	}
	if _, data := read(t, c); !strings.Contains(string(data), "UPSTREAM_UNAVAILABLE") {
		t.Fatalf("first attempt: %s, want UPSTREAM_UNAVAILABLE in band", data)
	}
	start := time.Now()
	for range 29 {
		expectBeforeUpgrade(t, h, tok, http.StatusServiceUnavailable)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("29 refusals took %v: each should be answered at once", took)
	}
	if n := strings.Count(h.logs.String(), `"upstream dial failed"`); n > 2 {
		t.Errorf("%d failed sessions dialled, want 1 or 2", n)
	}
}
