package main

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// sessionMillis is the duration_ms of the last "session end" line in logs.
func sessionMillis(t *testing.T, logs string) time.Duration {
	t.Helper()
	ms, ok := sessionEnd(t, logs)["duration_ms"].(float64)
	if !ok {
		t.Fatalf("no duration_ms in the session end line")
	}
	return time.Duration(ms) * time.Millisecond
}

// expectQuotaCut reads c until the relay ends it for the quota: the Error
// frame QUOTA_EXCEEDED, then close 4429; Deepgram gets 1000.
func expectQuotaCut(t *testing.T, h *harness, c *websocket.Conn) {
	t.Helper()
	expectErrorThenClose(t, c, endQuota)
	if got := h.upstreamClosed(); got.Code != websocket.StatusNormalClosure || got.Reason != "daily quota reached" {
		t.Errorf("Deepgram got %d %q, want 1000 daily quota reached", got.Code, got.Reason)
	}
	h.settled()
}

// TestQuotaOnInstance: without Redis, MAX_USER_SECONDS_PER_DAY counts on the
// instance: a live session is cut once its user's day is spent, never
// before, and the user's next session is refused.
func TestQuotaOnInstance(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	h := newHarness(t, authEnv(map[string]string{"MAX_USER_SECONDS_PER_DAY": "1"}), fakedeepgram.Options{})
	tok := "token=" + userToken(t, "hal")
	c := h.dial(tok)
	expectType(t, c, "Welcome")
	expectQuotaCut(t, h, c)
	if d := sessionMillis(t, h.logs.String()); d < time.Second {
		t.Errorf("cut after %s, before its 1 s quota", d)
	}
	expectErrorThenClose(t, h.dialOK(tok), refuseQuota)
	expectType(t, h.dial("token="+userToken(t, "ivy")), "Welcome") // another user
	if !strings.Contains(scrapeHandler(t, h), `dgrelay_sessions_total{outcome="quota",service="agent"} 1`) {
		t.Error("the cut is not counted as quota")
	}
}

// TestSharedQuota: with Redis the day counts across instances: time spent on
// one shortens a session on the other, two sessions at once on both are each
// cut short of the quota (the other's time counted within a step), and then
// the user is refused on both.
func TestSharedQuota(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	rs := startRedis(t)
	a, b := twoInstances(t, rs.URL(), map[string]string{"MAX_USER_SECONDS_PER_DAY": "1"})

	jack := "token=" + userToken(t, "jack")
	first := a.dial(jack)
	expectType(t, first, "Welcome")
	time.Sleep(600 * time.Millisecond) // spends part of the day on a
	first.Close(websocket.StatusNormalClosure, "")
	a.upstreamClosed()
	a.settled()
	held := sessionMillis(t, a.logs.String())
	second := b.dial(jack)
	expectType(t, second, "Welcome")
	expectQuotaCut(t, b, second)
	if d := sessionMillis(t, b.logs.String()); d >= time.Second || held+d < time.Second {
		t.Errorf("sessions of %s then %s: the day on a was not counted on b, or b cut before the quota", held, d)
	}
	expectErrorThenClose(t, a.dialOK(jack), refuseQuota)
	expectErrorThenClose(t, b.dialOK(jack), refuseQuota)

	kim := "token=" + userToken(t, "kim")
	ca, cb := a.dial(kim), b.dial(kim)
	expectType(t, ca, "Welcome")
	expectType(t, cb, "Welcome")
	expectQuotaCut(t, a, ca)
	expectQuotaCut(t, b, cb)
	for _, h := range []*harness{a, b} {
		if d := sessionMillis(t, h.logs.String()); d >= time.Second {
			t.Errorf("a session of two at once ran %s: the other's time was not counted", d)
		}
	}
}

// TestRedisOutageLocal: with Redis stopped mid-run, REDIS_FAILURE=local
// admits on the instance's own counters (never unlimited), warns once and
// counts the errors; when Redis is back (empty: no persistence), the live
// sessions' leases are there again and Redis decides again.
func TestRedisOutageLocal(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	rs := startRedis(t)
	a, b := twoInstances(t, rs.URL(), map[string]string{"MAX_SESSIONS_PER_USER": "2", "SESSION_RATE_PER_MINUTE": "0"})
	lee := "token=" + userToken(t, "lee")
	expectType(t, a.dial(lee), "Welcome")

	rs.Stop()
	// b holds none of lee's sessions: its own cap of 2 admits two, no more.
	expectType(t, b.dial(lee), "Welcome")
	expectType(t, b.dial(lee), "Welcome")
	expectRefused(t, b, lee, nil, 4429, "too many sessions")
	waitForLog(t, a.logs, "Redis unreachable") // a's renewals fail too
	m := scrapeHandler(t, b)
	if !strings.Contains(m, "dgrelay_redis_fallback 1") || !strings.Contains(m, "dgrelay_redis_errors_total") {
		t.Errorf("metrics during the outage:\n%s", grepLines(m, "redis"))
	}

	rs.Start()
	waitForLog(t, a.logs, "Redis reachable again")
	waitForLog(t, b.logs, "Redis reachable again")
	// Redis holds lee's three leases again, over the cap: a, which holds
	// one of them only, refuses on Redis's word.
	expectRefused(t, a, lee, nil, 4429, "too many sessions")
	rc := redisClient(t, rs.URL())
	leases, _, _ := a.relay.shared.Keys(identityKey(a.relay.identityHashKey, "sub:lee"))
	if n := rc.ZCard(context.Background(), leases).Val(); n != 3 {
		t.Errorf("%d leases in Redis after the outage, want 3", n)
	}
	for _, h := range []*harness{a, b} {
		if n := strings.Count(h.logs.String(), "Redis unreachable"); n != 1 {
			t.Errorf("%d outage warnings, want one", n)
		}
	}
}

// TestRedisOutageRefuse: REDIS_FAILURE=refuse refuses new sessions while
// Redis is away (LIMITS_UNAVAILABLE, 1013) and lets live ones run; new
// sessions are admitted again once it is back.
func TestRedisOutageRefuse(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	rs := startRedis(t)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": rs.URL(), "REDIS_FAILURE": "refuse"}), fakedeepgram.Options{EchoAudio: true})
	mia := "token=" + userToken(t, "mia")
	live := h.agentSession(mia)

	rs.Stop()
	waitForLog(t, h.logs, "Redis unreachable")
	expectErrorThenClose(t, h.dialOK(mia), refuseLimitsUnavailable)
	write(t, live, websocket.MessageBinary, []byte("still here"))
	if _, data := read(t, live); string(data) != "still here" {
		t.Fatalf("the live session echoed %q", data)
	}

	rs.Start()
	waitForLog(t, h.logs, "Redis reachable again")
	expectType(t, h.dial(mia), "Welcome")
}

// TestLeaseLapsesAfterSIGKILL: an instance killed without a drain (SIGKILL,
// a lost machine) holds its users' places in Redis only until their leases
// lapse: the other instance admits the user again within 20 s. The built
// binary, with the real lease periods (renewed every 5 s, lapsing after 15).
func TestLeaseLapsesAfterSIGKILL(t *testing.T) {
	rs := startRedis(t)
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	env := []string{"REDIS_URL=" + rs.URL(), "MAX_SESSIONS_PER_USER=1", "SESSION_RATE_PER_MINUTE=0"}
	killed := startProcess(t, fake, env...)
	killed.dial(t)
	// The other instance, unauthenticated too: the same user, 127.0.0.1.
	// REFUSAL_WINDOW=0: every refusal in band, as this test reads each one's close.
	other := newHarness(t, map[string]string{"REDIS_URL": rs.URL(), "MAX_SESSIONS_PER_USER": "1", "SESSION_RATE_PER_MINUTE": "0", "REFUSAL_WINDOW": "0"}, fakedeepgram.Options{})
	expectRefused(t, other, "", nil, 4429, "too many sessions")

	if err := killed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	killed.waitExit(t, 5*time.Second)
	for {
		c, err := other.tryDial("", nil)
		if err != nil {
			t.Fatal(err)
		}
		typ, data, err := readErr(c)
		if err == nil && typ == websocket.MessageText && strings.Contains(string(data), `"Welcome"`) {
			break
		}
		c.CloseNow()
		if time.Since(at) > 20*time.Second {
			t.Fatalf("the killed instance's place is still held %s after SIGKILL", time.Since(at).Round(time.Second))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the place was free again %s after SIGKILL", time.Since(at).Round(100*time.Millisecond))
}

// dialOK opens a client session through h's relay, refused or not.
func (h *harness) dialOK(query string) *websocket.Conn {
	h.t.Helper()
	c, err := h.tryDial(query, nil)
	if err != nil {
		h.t.Fatalf("dial: %v", err)
	}
	return c
}

// BenchmarkLeaseRenewal: one renewal round over 500 live sessions of 50
// users, each adding its time to its user's day: on the instance, or in a
// loopback redis-server (one pipeline). cpu-ns/session is the relay's CPU
// per session per round; a round comes every 5 s.
func BenchmarkLeaseRenewal(b *testing.B) {
	const sessions, users = 500, 50
	// redis-fleet: with MAX_TOTAL_SESSIONS too, each lease renewed in the
	// fleet's set as well.
	for _, where := range []string{"instance", "redis", "redis-fleet"} {
		b.Run(where, func(b *testing.B) {
			env := map[string]string{"MAX_SESSIONS_PER_USER": "0", "SESSION_RATE_PER_MINUTE": "0", "MAX_USER_SECONDS_PER_DAY": "1000000000"}
			if where != "instance" {
				env["REDIS_URL"] = startRedis(b).URL()
			}
			if where == "redis-fleet" {
				env["MAX_TOTAL_SESSIONS"] = "1000000000"
			}
			rl := benchRelay(b, env)
			var live []*admission
			for i := range sessions {
				s := &session{tools: &rl.tools, facts: &facts{identity: "ip:10.0.0." + strconv.Itoa(i%users)}, id: strconv.Itoa(i), started: time.Now()}
				s.identityKey = identityKey(rl.identityHashKey, s.identity)
				a, refused, _ := rl.admit(s)
				if a == nil {
					b.Fatalf("refused: %s", refused.cause)
				}
				a.relaying(s, s.started)
				live = append(live, a)
			}
			b.Cleanup(func() {
				for _, a := range live {
					a.release()
				}
			})
			b.ReportAllocs()
			cpu := cpuTime()
			b.ResetTimer()
			for range b.N {
				rl.renew(time.Now())
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N*sessions), "cpu-ns/session")
			if rl.shared != nil && rl.shared.Down() {
				b.Fatal("Redis failed during the benchmark")
			}
		})
	}
}

// TestOutageNotEndedByLateAnswer: an answer to a call that was in flight
// when the outage began does not end it (a slow Redis answers some calls in
// time and not others): the outage is logged once, and admission does not
// go back to a Redis that fails every new call.
func TestOutageNotEndedByLateAnswer(t *testing.T) {
	shortLeases(t, time.Hour, 3*time.Hour) // no renewal round: only admissions call Redis
	rs := startRedis(t)
	proxy := startSlowProxy(t, "127.0.0.1:"+rs.Port)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": proxy.url(), "REDIS_TIMEOUT": "2s",
		"MAX_SESSIONS_PER_USER": "0", "SESSION_RATE_PER_MINUTE": "0"}), fakedeepgram.Options{})
	expectType(t, h.dial("token="+userToken(t, "warm")), "Welcome") // a pooled connection

	// A call on the pooled connection, answered late but in time...
	proxy.delay.Store(int64(300 * time.Millisecond))
	late := make(chan *websocket.Conn)
	go func() { late <- h.dial("token=" + userToken(t, "late")) }()
	waitFor(t, func() bool { return proxy.holding.Load() > 0 })
	// ... while a new connection fails: the outage begins.
	proxy.refuseNew.Store(true)
	expectType(t, h.dial("token="+userToken(t, "first")), "Welcome") // local counters
	waitForLog(t, h.logs, "Redis unreachable")
	expectType(t, <-late, "Welcome")

	// The outage goes on: admission does not wait on Redis, nor log it again.
	expectType(t, h.dial("token="+userToken(t, "after")), "Welcome")
	logs := h.logs.String()
	if n := strings.Count(logs, "Redis unreachable"); n != 1 || strings.Contains(logs, "Redis reachable again") {
		t.Errorf("%d outage warnings, want one and no end:\n%s", n, grepLines(logs, "Redis"))
	}
}

// TestEndFreesPlaceWhileRedisHangs: a session that ends while Redis takes
// calls and never answers gives its instance place (MAX_SESSIONS) and its
// user's place here back at once, not after its lease's end has waited out
// REDIS_TIMEOUT: the next session is admitted while that end is still on
// its way.
func TestEndFreesPlaceWhileRedisHangs(t *testing.T) {
	shortLeases(t, time.Hour, 3*time.Hour) // no renewal round: only admissions and ends call Redis
	rs := startRedis(t)
	proxy := startSlowProxy(t, "127.0.0.1:"+rs.Port)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": proxy.url(), "REDIS_TIMEOUT": "2s",
		"MAX_SESSIONS": "1", "MAX_SESSIONS_PER_USER": "1"}), fakedeepgram.Options{})
	tok := "token=" + userToken(t, "pia")
	c := h.dial(tok)
	expectType(t, c, "Welcome")

	proxy.dropScriptAnswers.Store(true)
	sent := proxy.requests.Load()
	c.Close(websocket.StatusNormalClosure, "")
	// The lease's end has reached Redis, which will not answer it.
	waitFor(t, func() bool { return proxy.requests.Load() > sent })
	// Admitted on the instance's counters once Redis fails it (local).
	expectType(t, h.dial(tok), "Welcome")
}
