package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// TestLostAnswersCountedOnce: renewals that Redis runs but whose answers
// never come back (each call times out) add their time to the user's day
// once. Each one reached Redis; had the relay sent the same time again at
// the next round, the day would hold several times what the session lasted.
func TestLostAnswersCountedOnce(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 2*time.Second)
	rs := startRedis(t)
	proxy := startSlowProxy(t, "127.0.0.1:"+rs.Port)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": proxy.url(), "REDIS_TIMEOUT": "50ms",
		"MAX_USER_SECONDS_PER_DAY": "3600"}), fakedeepgram.Options{})
	rc := redisClient(t, rs.URL())
	ctx := context.Background()
	_, _, day := h.relay.shared.Keys(identityKey(h.relay.identityHashKey, "sub:olive"))
	dayMillis := func() int64 { ms, _ := rc.HGet(ctx, day, "ms").Int64(); return ms }

	began := time.Now()
	c := h.dial("token=" + userToken(t, "olive"))
	expectType(t, c, "Welcome")
	waitFor(t, func() bool { return dayMillis() > 0 }) // a round answered

	proxy.dropScriptAnswers.Store(true)
	// Ten rounds that Redis runs and the relay never hears back from.
	waitFor(t, func() bool { return failedRenewals(t, h) >= 10 })
	proxy.dropScriptAnswers.Store(false)
	waitForLog(t, h.logs, "Redis reachable again")
	c.Close(websocket.StatusNormalClosure, "")
	h.upstreamClosed()
	h.settled()
	lasted := time.Since(began)

	if ms := time.Duration(dayMillis()) * time.Millisecond; ms > lasted {
		t.Fatalf("the day holds %s of a session that lasted at most %s: lost answers counted again", ms, lasted)
	}
}

// failedRenewals is how many renewal rounds of h found no answer in time.
func failedRenewals(t *testing.T, h *harness) int {
	t.Helper()
	const name = `dgrelay_redis_errors_total{op="renew"} `
	for _, line := range strings.Split(scrapeHandler(t, h), "\n") {
		if v, ok := strings.CutPrefix(line, name); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}
