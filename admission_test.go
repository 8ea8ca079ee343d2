package main

import (
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

func TestPerUserSessionCap(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"MAX_SESSIONS_PER_USER": "2"}), fakedeepgram.Options{})
	alice, bob := userToken(t, "alice"), userToken(t, "bob")
	a1, a2 := h.dial("token="+alice), h.dial("token="+alice)
	expectType(t, a1, "Welcome")
	expectType(t, a2, "Welcome")
	expectRefused(t, h, "token="+alice, nil, 4429, "too many sessions")

	b := h.dial("token=" + bob) // another user is not affected
	expectType(t, b, "Welcome")

	a1.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
	waitFor(t, func() bool { return h.relay.sessions.active() == 2 })
	a3 := h.dial("token=" + alice) // a freed slot is usable again
	expectType(t, a3, "Welcome")
}

func TestSessionRatePerUser(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"SESSION_RATE_PER_MINUTE": "3", "MAX_SESSIONS_PER_USER": "0"}), fakedeepgram.Options{})
	tok := userToken(t, "carol")
	for i := 0; i < 3; i++ {
		c := h.dial("token=" + tok)
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	}
	expectRefused(t, h, "token="+tok, nil, 4429, "too many new sessions")
	c := h.dial("token=" + userToken(t, "dave"))
	expectType(t, c, "Welcome")
}

// TestUnauthenticatedLimitsByIP: without tokens, the client address is the
// identity the per-user limits count.
func TestUnauthenticatedLimitsByIP(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_SESSIONS_PER_USER": "1"}, fakedeepgram.Options{})
	c := h.dial("")
	expectType(t, c, "Welcome")
	expectRefused(t, h, "", nil, 4429, "too many sessions")
}

func TestInstanceFull(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_SESSIONS": "2", "MAX_SESSIONS_PER_USER": "0"}, fakedeepgram.Options{})
	for i := 0; i < 2; i++ {
		expectType(t, h.dial(""), "Welcome")
	}
	expectRefused(t, h, "", nil, websocket.StatusTryAgainLater, "relay full, try again")
	if !strings.Contains(h.logs.String(), `"refusal":"instance_full"`) {
		t.Error("the refusal is not logged")
	}
}

func TestUserLimitsForget(t *testing.T) {
	ul := newUserLimits(5, 60, 0, 1<<20)
	now := time.Now()
	ul.acquire("a", now, false)
	ul.acquire("b", now, false)
	ul.release("a")
	ul.forget(now.Add(2 * time.Minute))
	if ul.size() != 1 {
		t.Fatalf("%d identities tracked, want only the one with a live session", ul.size())
	}
}

// size is how many identities are tracked.
func (ul *userLimits) size() int {
	ul.mu.Lock()
	defer ul.mu.Unlock()
	return len(ul.users)
}
