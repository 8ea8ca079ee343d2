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
	// An outage is what more than one identity meets: a second user's
	// failed session opens it (one alone may be failing on its own query).
	openOutage(t, h, "second-user")
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
	if dials > 7 {
		t.Errorf("30 attempts during an outage made %d dials, want at most 7 (4 of them the two sessions that found it)", dials)
	}
	status, body := readyz(t, h)
	if status != http.StatusOK || !strings.Contains(body, "upstream agent: down") || !strings.Contains(body, "upstream transcription: up") {
		t.Errorf("/readyz during the outage: %d %q", status, body)
	}
	if m := scrapeHandler(t, h); !strings.Contains(m, `dgrelay_upstream_down{service="agent"} 1`) {
		t.Errorf("metrics lack the outage:\n%s", grepLines(m, "upstream_down"))
	}
	// Another user is told in band once, with one dial at most (it may
	// be the probe: the first user's probe failed last, so it waits).
	before := len(h.fake.Handshakes())
	other := "token=" + userToken(t, "other-user")
	if c, _ := attempt(t, h, other); c != nil {
		c.CloseNow()
	}
	if dials := len(h.fake.Handshakes()); dials > before+1 {
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
	openOutage(t, h, "second-user")
	start := time.Now()
	for range 29 {
		expectBeforeUpgrade(t, h, tok, http.StatusServiceUnavailable)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("29 refusals took %v: each should be answered at once", took)
	}
	if n := strings.Count(h.logs.String(), `"upstream dial failed"`); n > 3 {
		t.Errorf("%d failed sessions dialled, want 2 or 3", n)
	}
}

// openOutage has user's session fail its dial too, which opens the outage.
func openOutage(t *testing.T, h *harness, user string) {
	t.Helper()
	if c, _ := attempt(t, h, "token="+userToken(t, user)); c != nil {
		c.CloseNow()
	}
	waitForLog(t, h.logs, `"upstream down`)
}

// TestOutageNotOneIdentity (issue 22's attacker's read): one user whose
// sessions fail at Deepgram (its query, say) does not hold everyone's
// dials: another user still gets through.
func TestOutageNotOneIdentity(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"UPSTREAM_RETRIES": "1", "REFUSAL_WINDOW": "0"}),
		fakedeepgram.Options{APIKey: testAPIKey, RejectStatus: http.StatusServiceUnavailable})
	bad := "token=" + userToken(t, "failing-user")
	for range 3 {
		if c, _ := attempt(t, h, bad); c != nil {
			c.CloseNow()
		}
	}
	h.fake.SetOptions(fakedeepgram.Options{APIKey: testAPIKey})
	c, _ := attempt(t, h, "token="+userToken(t, "someone-else"))
	if c == nil {
		t.Fatal("another user was refused before the upgrade")
	}
	applySettings(t, c)
	if strings.Contains(h.logs.String(), `"upstream down`) {
		t.Error("one identity's failures opened the outage")
	}
}
