package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// attempt opens an upgrade to h's relay as a client would and returns the
// connection when upgraded, else the HTTP answer it got instead.
func attempt(t *testing.T, h *harness, query string) (*websocket.Conn, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, h.wsURL+"?"+query, nil)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return nil, resp
	}
	t.Cleanup(func() { c.CloseNow() })
	return c, nil
}

// expectInBand: the attempt is upgraded and told e in band (Error frame, close).
func expectInBand(t *testing.T, h *harness, query string, e ending) {
	t.Helper()
	c, resp := attempt(t, h, query)
	if c == nil {
		t.Fatalf("%s: HTTP %d %s before the upgrade, want the first refusal in band", e.client.errorCode, resp.StatusCode, resp.Header)
	}
	expectErrorThenClose(t, c, e)
}

// expectBeforeUpgrade: the attempt is answered status with a Retry-After of
// at least one second, not upgraded.
func expectBeforeUpgrade(t *testing.T, h *harness, query string, status int) {
	t.Helper()
	c, resp := attempt(t, h, query)
	if c != nil {
		t.Fatalf("upgraded; want HTTP %d before the upgrade", status)
	}
	if resp.StatusCode != status {
		t.Fatalf("HTTP %d, want %d", resp.StatusCode, status)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
}

// TestRepeatedRefusalsBeforeUpgrade: the first refusal of a kind for an
// identity is told in band; its repeats within the window get 401 or 429
// with Retry-After before the upgrade, no dial and no log line each; another
// credential or another user at the same address is not affected; the
// repeats are counted and logged as a summary.
func TestRepeatedRefusalsBeforeUpgrade(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"MAX_SESSIONS_PER_USER": "1", "SESSION_RATE_PER_MINUTE": "0"}), fakedeepgram.Options{APIKey: testAPIKey})
	expired := "token=" + hs256(t, testJWTSecret, claims{sub: "late", exp: -time.Hour})

	expectInBand(t, h, expired, refuseTokenExpired)
	for range 5 {
		expectBeforeUpgrade(t, h, expired, http.StatusUnauthorized)
	}
	// Another bad credential from the same address is told in band.
	expectInBand(t, h, "token="+hs256(t, testJWTSecret, claims{sub: "late", exp: -2 * time.Hour}), refuseTokenExpired)
	expectInBand(t, h, "token=not-a-jwt", refuseTokenInvalid)
	expectBeforeUpgrade(t, h, "token=not-a-jwt", http.StatusUnauthorized)
	expectInBand(t, h, "", refuseTokenMissing)
	expectBeforeUpgrade(t, h, "", http.StatusUnauthorized)

	// A user at MAX_SESSIONS_PER_USER: in band once, then 429.
	busy := "token=" + userToken(t, "busy-user")
	held := h.agentSession(busy)
	expectInBand(t, h, busy, refuseUserSessions)
	for range 5 {
		expectBeforeUpgrade(t, h, busy, http.StatusTooManyRequests)
	}
	// Another user at the same address (an office) is not affected.
	other := h.agentSession("token=" + userToken(t, "other-user"))
	other.Close(websocket.StatusNormalClosure, "")
	// Once the user's session ends, the user gets in: a repeat is only
	// what would be refused anyway.
	held.Close(websocket.StatusNormalClosure, "")
	h.settled()
	h.agentSession(busy).Close(websocket.StatusNormalClosure, "")

	if n := len(h.fake.Handshakes()); n != 3 {
		t.Errorf("Deepgram saw %d handshakes, want 3 (the three sessions)", n)
	}
	if n := strings.Count(h.logs.String(), `"session refused"`); n != 5 {
		t.Errorf("%d session refused lines, want 5 (the in-band refusals):\n%s", n, grepLines(h.logs.String(), "session refused"))
	}
	body := scrapeHandler(t, h)
	for _, want := range []string{
		`dgrelay_refusals_repeated_total{reason="token_expired"} 5`,
		`dgrelay_refusals_repeated_total{reason="token_invalid"} 1`,
		`dgrelay_refusals_repeated_total{reason="token_missing"} 1`,
		`dgrelay_refusals_repeated_total{reason="user_sessions"} 5`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	h.relay.logRefusalSummary(time.Now(), time.Minute)
	summary := grepLines(h.logs.String(), `"refusals repeated"`)
	if n := strings.Count(summary, "\n") + 1; n != 4 || !strings.Contains(summary, `"who":"sub:busy-user","refusal":"user_sessions","repeats":5`) {
		t.Errorf("summary, want 4 lines (expired, invalid, missing, busy-user):\n%s", summary)
	}
	if strings.Contains(h.logs.String(), "not-a-jwt") {
		t.Errorf("a token reached the logs")
	}
}

// TestCredentialFlood: one address making up tokens is told of
// credentialsPerAddress of them in band within the window, and answered 401
// before the upgrade for every new one past them, with one log line, no
// entry in the refusal memory each, and no dial; a valid user at the same
// address is not affected; once the window has passed, a new credential is
// told in band again.
func TestCredentialFlood(t *testing.T) {
	const window = time.Second
	h := newHarness(t, authEnv(map[string]string{"REFUSAL_WINDOW": window.String()}), fakedeepgram.Options{APIKey: testAPIKey})
	for i := range credentialsPerAddress {
		expectInBand(t, h, "token=made-up-"+strconv.Itoa(i), refuseTokenInvalid)
	}
	for i := range 50 {
		expectBeforeUpgrade(t, h, "token=made-up-more-"+strconv.Itoa(i), http.StatusUnauthorized)
	}
	expectBeforeUpgrade(t, h, "token=made-up-0", http.StatusUnauthorized) // a repeat, as before
	if n := h.relay.refused.len(); n != credentialsPerAddress {
		t.Errorf("the refusal memory holds %d entries, want %d", n, credentialsPerAddress)
	}
	logs := h.logs.String()
	if n := strings.Count(logs, `"session refused"`); n != credentialsPerAddress {
		t.Errorf("%d session refused lines, want %d", n, credentialsPerAddress)
	}
	if n := strings.Count(logs, "more failing credentials from one address"); n != 1 {
		t.Errorf("%d flood lines, want 1:\n%s", n, logs)
	}
	if body := scrapeHandler(t, h); !strings.Contains(body, `dgrelay_refusals_repeated_total{reason="token_invalid"} 51`) {
		t.Errorf("repeats:\n%s", grepLines(body, "refusals_repeated"))
	}
	h.agentSession("token="+userToken(t, "same-office")).Close(websocket.StatusNormalClosure, "")
	if n := len(h.fake.Handshakes()); n != 1 {
		t.Errorf("Deepgram saw %d handshakes, want 1 (the valid user's)", n)
	}
	time.Sleep(window + 100*time.Millisecond)
	expectInBand(t, h, "token=made-up-later", refuseTokenInvalid)
}

// TestCredentialFloodsBounded: addresses without end hold refusalEntries at
// most, the least recently refused forgotten first; an address's bound holds
// across them.
func TestCredentialFloodsBounded(t *testing.T) {
	c := newCredentialFloods(time.Minute)
	now := time.Now()
	for i := range credentialsPerAddress + 1 {
		if over, _ := c.overflows("ip:10.0.0.1", strconv.Itoa(i), now); over != (i == credentialsPerAddress) {
			t.Fatalf("credential %d: over %v", i, over)
		}
	}
	for i := range 100_000 {
		c.overflows("ip:10.1."+strconv.Itoa(i), "x", now)
		if i%1000 == 0 {
			if over, _ := c.overflows("ip:10.0.0.1", "new-"+strconv.Itoa(i), now); !over {
				t.Fatalf("the flooding address was forgotten after %d others", i)
			}
		}
	}
	if n := len(c.entries); n > refusalEntries || c.order.Len() != n {
		t.Fatalf("%d entries (%d in order), want at most %d", n, c.order.Len(), refusalEntries)
	}
	if over, _ := c.overflows("ip:10.0.0.1", "later", now.Add(time.Minute)); over {
		t.Fatal("past the window, a new credential is still over the bound")
	}
}

// TestRefusalMemoryBounded: a client making up a million credentials holds
// at most refusalEntries in the memory, and a client retrying forever keeps
// its place (its repeats stay before the upgrade) among them.
func TestRefusalMemoryBounded(t *testing.T) {
	m := newRefusalMemory(1000, time.Minute)
	now := time.Now()
	m.repeat("ip:10.0.0.1 token:forever", "token_expired", now)
	for i := range 1_000_000 {
		m.repeat("ip:10.0.0.2 token:"+strconv.Itoa(i), "token_invalid", now)
		if i%100 == 0 && !m.repeat("ip:10.0.0.1 token:forever", "token_expired", now) {
			t.Fatalf("the retrying client was forgotten after %d made-up tokens", i)
		}
	}
	if n := m.len(); n > 1000 {
		t.Fatalf("%d entries, want at most 1000", n)
	}
	repeated, evicted := m.take(now)
	if len(repeated) != 1 || repeated[0].repeats != 10_000 || evicted < 998_000 {
		t.Fatalf("take: %+v, %d evicted", repeated, evicted)
	}
	if _, _ = m.take(now.Add(time.Minute)); m.len() != 0 {
		t.Fatalf("%d entries outlived their window", m.len())
	}
}

// TestRepeatedRateRefusal: a user over SESSION_RATE_PER_MINUTE is told in
// band once, then gets 429 with Retry-After, and its repeats spend none of
// its rate: another user at the same address still gets in.
func TestRepeatedRateRefusal(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"SESSION_RATE_PER_MINUTE": "1"}), fakedeepgram.Options{APIKey: testAPIKey})
	fast := "token=" + userToken(t, "fast-user")
	h.agentSession(fast).Close(websocket.StatusNormalClosure, "")
	expectInBand(t, h, fast, refuseUserRate)
	for range 3 {
		expectBeforeUpgrade(t, h, fast, http.StatusTooManyRequests)
	}
	h.agentSession("token="+userToken(t, "slow-user")).Close(websocket.StatusNormalClosure, "")
	if n := strings.Count(h.logs.String(), `"session refused"`); n != 1 {
		t.Errorf("%d session refused lines, want 1", n)
	}
}
