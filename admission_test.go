package main

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
	"github.com/sethvargo/go-envconfig"
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
	ul.acquire("a", now)
	ul.acquire("b", now)
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

// benchRelay is a relay configured from env, with no listener and no log,
// for benchmarks of what it does at a session's start and end.
func benchRelay(b *testing.B, env map[string]string) *relay {
	b.Helper()
	vars := map[string]string{"DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true"}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(vars))
	if err != nil {
		b.Fatal(err)
	}
	rl, err := newRelay(cfg, testAPIKey, nil, newLogger(io.Discard, slog.LevelError))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rl.close)
	return rl
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAdmission: one session's admission and release, every per-user
// limit and a quota on, counted on the instance or in a loopback
// redis-server (a script each way). cpu-ns/op is the relay's own CPU (the
// server's is another process's); ns/op includes waiting for Redis.
func BenchmarkAdmission(b *testing.B) {
	limits := map[string]string{"MAX_SESSIONS_PER_USER": "1000000", "SESSION_RATE_PER_MINUTE": "10000000",
		"MAX_USER_SECONDS_PER_DAY": "1000000000"}
	// redis-fleet: with MAX_TOTAL_SESSIONS too (far above the load), each
	// lease also in the fleet's set.
	for _, where := range []string{"instance", "redis", "redis-fleet"} {
		b.Run(where, func(b *testing.B) {
			env := maps.Clone(limits)
			if where != "instance" {
				env["REDIS_URL"] = startRedis(b).URL()
			}
			if where == "redis-fleet" {
				env["MAX_TOTAL_SESSIONS"] = "1000000000"
			}
			rl := benchRelay(b, env)
			b.ReportAllocs()
			cpu := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				s := &session{tools: &rl.tools, facts: &facts{identity: "ip:127.0.0.1"}, id: strconv.Itoa(i), started: time.Now()}
				s.identityKey = identityKey(rl.identityHashKey, s.identity)
				a, refused, _ := rl.admit(s)
				if a == nil {
					b.Fatalf("refused: %s", refused.cause)
				}
				a.release()
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
			if rl.shared != nil && rl.shared.Down() {
				b.Fatal("Redis failed during the benchmark")
			}
		})
	}
}

// TestLocalRefusalSparesRedis: a user already over a limit on this
// instance's own counters (its rate here, its time here, its live sessions
// here) is refused without a Redis call: those counters hold this
// instance's share of what Redis counts, so Redis would refuse too. A user
// hammering the relay past its limits then costs Redis nothing, and cannot
// fill the Redis pool until admissions time out (an outage for every user:
// LIMITS_UNAVAILABLE under REDIS_FAILURE=refuse).
func TestLocalRefusalSparesRedis(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	rs := startRedis(t)
	// REFUSAL_WINDOW=0: every refusal in band, as this test reads each one's close.
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": rs.URL(), "REDIS_FAILURE": "refuse", "REFUSAL_WINDOW": "0",
		"MAX_SESSIONS_PER_USER": "1", "SESSION_RATE_PER_MINUTE": "2", "MAX_USER_SECONDS_PER_DAY": "1"}), fakedeepgram.Options{})
	const tries = 10
	expectAsked := func(n int) {
		t.Helper()
		got := grepLines(scrapeHandler(t, h), "dgrelay_redis_admission_seconds_count")
		if strings.TrimSpace(got) != `dgrelay_redis_admission_seconds_count{result="ok"} `+strconv.Itoa(n) {
			t.Errorf("Redis was asked about refusals the instance could make alone; want %d admissions asked:\n%s", n, got)
		}
	}

	rated := "token=" + userToken(t, "rated")
	for range 2 {
		c := h.dial(rated)
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
		h.upstreamClosed()
		h.settled()
	}
	for range tries {
		expectErrorThenClose(t, h.dialOK(rated), refuseUserRate)
	}
	expectAsked(2)

	spent := "token=" + userToken(t, "spent")
	c := h.dial(spent)
	expectType(t, c, "Welcome")
	expectQuotaCut(t, h, c)
	for range tries {
		expectErrorThenClose(t, h.dialOK(spent), refuseQuota)
	}
	expectAsked(3)

	held := "token=" + userToken(t, "holder")
	expectType(t, h.dial(held), "Welcome")
	for range tries {
		expectErrorThenClose(t, h.dialOK(held), refuseUserSessions)
	}
	expectAsked(4)
}

// TestTimedOutAdmissionWithdrawn: under REDIS_FAILURE=refuse, an admission
// that Redis ran but whose answer never came (the call timed out, the user
// was refused) does not leave the refused user a lease or a spent rate
// token in Redis.
func TestTimedOutAdmissionWithdrawn(t *testing.T) {
	shortLeases(t, time.Hour, 3*time.Hour) // a leftover lease would stay
	rs := startRedis(t)
	proxy := startSlowProxy(t, "127.0.0.1:"+rs.Port)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": proxy.url(), "REDIS_TIMEOUT": "200ms",
		"REDIS_FAILURE": "refuse", "MAX_SESSIONS_PER_USER": "1", "SESSION_RATE_PER_MINUTE": "1"}), fakedeepgram.Options{})
	// A session begun and ended: both scripts are loaded, a connection pooled.
	warm := h.dial("token=" + userToken(t, "warm"))
	expectType(t, warm, "Welcome")
	warm.Close(websocket.StatusNormalClosure, "")
	h.settled()

	proxy.dropScriptAnswers.Store(true)
	sent := proxy.requests.Load()
	expectErrorThenClose(t, h.dialOK("token="+userToken(t, "quin")), refuseLimitsUnavailable)
	if proxy.requests.Load() == sent {
		t.Fatal("the admission did not reach Redis")
	}
	rc := redisClient(t, rs.URL())
	leases, rate, _ := h.relay.shared.Keys(identityKey(h.relay.identityHashKey, "sub:quin"))
	waitFor(t, func() bool { return rc.Exists(context.Background(), leases, rate).Val() == 0 })
}
