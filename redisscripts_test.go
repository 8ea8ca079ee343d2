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
	proxy := startSlowProxy(t, "127.0.0.1:"+rs.port)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": proxy.url(), "REDIS_TIMEOUT": "50ms",
		"MAX_USER_SECONDS_PER_DAY": "3600"}), fakedeepgram.Options{})
	rc := redisClient(t, rs.url())
	ctx := context.Background()
	_, _, day := h.relay.shared.keys(userKey(h.relay.userHashKey, "sub:olive"))
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

// TestLateCallsChangeNothing: a renewal sent again (its answer lost) adds
// nothing twice; a renewal or an admission of a session that lands after
// the session's end (held in the network past REDIS_TIMEOUT) neither brings
// its lease back nor adds time nor takes a rate token. The scripts in a
// real redis-server, called as the relay calls them.
func TestLateCallsChangeNothing(t *testing.T) {
	rs := startRedis(t)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": rs.url(), "MAX_USER_SECONDS_PER_DAY": "3600",
		"SESSION_RATE_PER_MINUTE": "2"}), fakedeepgram.Options{})
	sl, user := h.relay.shared, userKey(h.relay.userHashKey, "sub:rita")
	leases, rate, day := sl.keys(user)
	rc := redisClient(t, rs.url())
	ctx := context.Background()
	expect := func(what string, ms, live int64) {
		t.Helper()
		if got, _ := rc.HGet(ctx, day, "ms").Int64(); got != ms {
			t.Errorf("%s: the day holds %d ms, want %d", what, got, ms)
		}
		if got := rc.ZCard(ctx, leases).Val(); got != live {
			t.Errorf("%s: %d leases, want %d", what, got, live)
		}
	}
	renew := func(total, base int64) {
		t.Helper()
		if err := sl.renew([]leaseUpdate{{keys: sl.leaseKeys(user, "s1"), id: "s1", total: total, base: base}}); err != nil {
			t.Fatal(err)
		}
	}
	if refused, _, err := sl.admit(user, "s1"); err != nil || refused.cause != "" {
		t.Fatalf("admit: %v %q", err, refused.cause)
	}
	renew(1000, 0)
	renew(1000, 0) // the same round sent again: its answer was lost
	expect("a renewal sent twice", 1000, 1)
	renew(2500, 0)
	renew(2000, 0) // an older renewal landing after a newer one
	expect("renewals out of order", 2500, 1)
	if err := sl.end(sl.leaseKeys(user, "s1"), "s1", 3000, 2500, false); err != nil {
		t.Fatal(err)
	}
	expect("the end", 3000, 0)
	renew(2500, 2500) // held in the network until after the end
	expect("a renewal after the end", 3000, 0)

	// A withdrawal that lands before the admission it withdraws.
	tat := rc.Get(ctx, rate).Val()
	if err := sl.end(sl.leaseKeys(user, "s2"), "s2", 0, 0, true); err != nil {
		t.Fatal(err)
	}
	if refused, _, err := sl.admit(user, "s2"); err != nil || refused.cause != refuseLimitsUnavailable.cause {
		t.Errorf("a withdrawn session's admission: %v %q", err, refused.cause)
	}
	expect("an admission after its withdrawal", 3000, 0)
	if got := rc.Get(ctx, rate).Val(); got != tat {
		t.Errorf("an admission after its withdrawal took a rate token: %s, was %s", got, tat)
	}
}
