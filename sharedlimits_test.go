package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/testredis"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/sethvargo/go-envconfig"
)

// startRedis starts a redis-server for t (internal/testredis); extra are
// more of its arguments (--requirepass ...). Cleanup stops it.
func startRedis(t testing.TB, extra ...string) *testredis.Server {
	t.Helper()
	return testredis.Start(t, extra...)
}

// redisClient is a client of rs for the test to look inside; closed at
// cleanup (its pool has goroutines).
func redisClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// shortLeases shortens the lease periods for t, so that tests need not wait
// the real 5 s and 15 s; set before the relays start.
func shortLeases(t *testing.T, renew, ttl time.Duration) {
	oldRenew, oldTTL := leaseRenewEvery, leaseTTL
	leaseRenewEvery, leaseTTL = renew, ttl
	t.Cleanup(func() { leaseRenewEvery, leaseTTL = oldRenew, oldTTL })
}

// twoInstances starts two relays sharing rs, each with its own fake Deepgram
// and listener, configured alike from env.
func twoInstances(t *testing.T, redisURL string, env map[string]string) (*harness, *harness) {
	t.Helper()
	env = authEnv(env)
	env["REDIS_URL"] = redisURL
	return newHarness(t, env, fakedeepgram.Options{}), newHarness(t, env, fakedeepgram.Options{})
}

// TestSharedUserCap: MAX_SESSIONS_PER_USER counts a user's sessions on both
// instances together, and a place freed on one is usable on the other.
func TestSharedUserCap(t *testing.T) {
	rs := startRedis(t)
	a, b := twoInstances(t, rs.URL(), map[string]string{"MAX_SESSIONS_PER_USER": "2"})
	alice := "token=" + userToken(t, "alice")
	a1 := a.dial(alice)
	expectType(t, a1, "Welcome")
	expectType(t, b.dial(alice), "Welcome")
	expectRefused(t, a, alice, nil, 4429, "too many sessions")
	expectRefused(t, b, alice, nil, 4429, "too many sessions")
	expectType(t, b.dial("token="+userToken(t, "bob")), "Welcome") // another user

	a1.Close(websocket.StatusNormalClosure, "")
	a.settled()
	expectType(t, b.dial(alice), "Welcome")
}

// TestSharedSessionRate: SESSION_RATE_PER_MINUTE counts new sessions on both
// instances together.
func TestSharedSessionRate(t *testing.T) {
	rs := startRedis(t)
	a, b := twoInstances(t, rs.URL(), map[string]string{"SESSION_RATE_PER_MINUTE": "3", "MAX_SESSIONS_PER_USER": "0"})
	carol := "token=" + userToken(t, "carol")
	for _, h := range []*harness{a, b, a} {
		c := h.dial(carol)
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	}
	expectRefused(t, b, carol, nil, 4429, "too many new sessions")
	expectRefused(t, a, carol, nil, 4429, "too many new sessions")
	expectType(t, b.dial("token="+userToken(t, "dave")), "Welcome")
}

// TestSharedAdmissionAtomic: many admissions of one user at once, on both
// instances, never pass the cap: exactly the cap's worth get Welcome.
func TestSharedAdmissionAtomic(t *testing.T) {
	rs := startRedis(t)
	const cap, tries = 3, 24
	// REFUSAL_WINDOW=0: every refusal in band, as this test reads each one's close.
	a, b := twoInstances(t, rs.URL(), map[string]string{"MAX_SESSIONS_PER_USER": "3", "SESSION_RATE_PER_MINUTE": "0", "REFUSAL_WINDOW": "0"})
	tok := "token=" + userToken(t, "erin")
	var mu sync.Mutex
	admitted, refused := 0, 0
	var wg sync.WaitGroup
	for i := range tries {
		h := []*harness{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, h.wsURL+"?"+tok, nil)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			// Held open until the test ends: a place given back would
			// let one more in.
			t.Cleanup(func() { c.CloseNow() })
			// Admitted sessions hear Welcome; refused ones an Error frame.
			_, data, err := c.Read(ctx)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && strings.Contains(string(data), `"Welcome"`):
				admitted++
			case err == nil && strings.Contains(string(data), "TOO_MANY_SESSIONS"):
				refused++
			default:
				t.Errorf("neither Welcome nor TOO_MANY_SESSIONS: %q %v", data, err)
			}
		}()
	}
	wg.Wait()
	if admitted != cap || refused != tries-cap {
		t.Fatalf("%d admitted, %d refused; want %d and %d\n%s\n%s", admitted, refused, cap, tries-cap, grepLines(a.logs.String(), "Redis"), grepLines(b.logs.String(), "Redis"))
	}
}

// TestNoIdentityInRedis: what a user leaves in Redis names it only by its
// keyed hash: no sub, IP or token in any key or value.
func TestNoIdentityInRedis(t *testing.T) {
	rs := startRedis(t)
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": rs.URL(), "MAX_USER_SECONDS_PER_DAY": "3600",
		"SESSION_RATE_PER_MINUTE": "10"}), fakedeepgram.Options{})
	tok := userToken(t, "frank@example.com")
	c := h.dial("token=" + tok)
	expectType(t, c, "Welcome")
	c.Close(websocket.StatusNormalClosure, "")
	h.settled()
	anon := newHarness(t, map[string]string{"REDIS_URL": rs.URL()}, fakedeepgram.Options{})
	expectType(t, anon.dial(""), "Welcome")

	rc := redisClient(t, rs.URL())
	ctx := context.Background()
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	var dump strings.Builder
	for _, k := range keys {
		dump.WriteString(k + "\n")
		switch typ := rc.Type(ctx, k).Val(); typ {
		case "zset":
			dump.WriteString(strings.Join(rc.ZRange(ctx, k, 0, -1).Val(), " "))
		case "hash":
			for f, v := range rc.HGetAll(ctx, k).Val() {
				dump.WriteString(f + "=" + v + " ")
			}
		case "string":
			dump.WriteString(rc.Get(ctx, k).Val())
		default:
			t.Errorf("key %s of type %s", k, typ)
		}
		dump.WriteString("\n")
		if !strings.HasPrefix(k, "dgrelay:{") {
			t.Errorf("key %s is not under the prefix and a hash tag", k)
		}
	}
	for _, secret := range []string{"frank", "example.com", "127.0.0.1", tok, testAPIKey} {
		if strings.Contains(dump.String(), secret) {
			t.Errorf("Redis holds %q:\n%s", secret, dump.String())
		}
	}
}

// TestRedisPasswordNeverLogged: a REDIS_URL with a password works, and the
// password appears in no log line, with Redis up or refusing it.
func TestRedisPasswordNeverLogged(t *testing.T) {
	const password = "redis-PASSWORD-9f8e7d"
	rs := startRedis(t, "--requirepass", password)
	good := "redis://:" + password + "@127.0.0.1:" + rs.Port
	h := newHarness(t, authEnv(map[string]string{"REDIS_URL": good, "MAX_SESSIONS_PER_USER": "1"}), fakedeepgram.Options{})
	expectType(t, h.dial("token="+userToken(t, "gina")), "Welcome")
	expectRefused(t, h, "token="+userToken(t, "gina"), nil, 4429, "too many sessions")

	bad := newHarness(t, authEnv(map[string]string{"REDIS_URL": "redis://default:not-" + password + "@127.0.0.1:" + rs.Port}), fakedeepgram.Options{})
	expectType(t, bad.dial("token="+userToken(t, "gina")), "Welcome") // local counters: REDIS_FAILURE=local
	waitForLog(t, bad.logs, "Redis unreachable")
	for _, logs := range []string{h.logs.String(), bad.logs.String()} {
		if strings.Contains(logs, password) {
			t.Errorf("the Redis password is in the logs:\n%s", logs)
		}
	}
}

// slowProxy sits between relays and Redis and holds every byte for delay
// (0: none), as a Redis that answers slowly or not at all.
type slowProxy struct {
	ln     net.Listener
	target string
	delay  atomic.Int64
	// refuseNew closes new connections at once (live ones go on);
	// holding counts the reads being held for the delay.
	refuseNew atomic.Bool
	holding   atomic.Int32
	// dropScriptAnswers passes every request on and drops Redis's answers
	// to the relay's scripts (a connection's handshake is answered): a
	// call that Redis runs and whose answer never comes. requests counts
	// the reads passed on to Redis.
	dropScriptAnswers atomic.Bool
	requests          atomic.Int32
	done              chan struct{}
	wg                sync.WaitGroup
}

func startSlowProxy(t *testing.T, target string) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, target: target, done: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		close(p.done)
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *slowProxy) url() string { return "redis://" + p.ln.Addr().String() }

func (p *slowProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.refuseNew.Load() {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		scripts := new(atomic.Bool) // a script was sent on this connection
		go p.pipe(c, up, false, scripts)
		go p.pipe(up, c, true, scripts)
	}
}

// pipe copies src to dst, each read held for the delay in force (replies:
// Redis's answers); it ends both when either side does, or the test does.
func (p *slowProxy) pipe(src, dst net.Conn, replies bool, scripts *atomic.Bool) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	go func() {
		<-p.done
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.holding.Add(1)
		select {
		case <-time.After(time.Duration(p.delay.Load())):
		case <-p.done:
			return
		}
		p.holding.Add(-1)
		if replies && scripts.Load() && p.dropScriptAnswers.Load() {
			continue
		}
		if !replies {
			p.requests.Add(1)
			if bytes.Contains(bytes.ToLower(buf[:n]), []byte("eval")) {
				scripts.Store(true)
			}
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// TestRedisSlow: a Redis that stops answering in time costs a connect at
// most REDIS_TIMEOUT: admission goes on with the instance's counters (local)
// or refuses (refuse), each within a connect deadline far below the delay.
// When Redis answers in time again, it decides again.
func TestRedisSlow(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	rs := startRedis(t)
	proxy := startSlowProxy(t, "127.0.0.1:"+rs.Port)
	for _, mode := range []string{"local", "refuse"} {
		t.Run(mode, func(t *testing.T) {
			proxy.delay.Store(0)
			h := newHarness(t, authEnv(map[string]string{"REDIS_URL": proxy.url(), "REDIS_TIMEOUT": "200ms",
				"REDIS_FAILURE": mode, "MAX_SESSIONS_PER_USER": "1"}), fakedeepgram.Options{})
			expectType(t, h.dial("token="+userToken(t, "slow-"+mode)), "Welcome")

			proxy.delay.Store(int64(time.Minute))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, h.wsURL+"?token="+userToken(t, "other-"+mode), nil)
			if err != nil {
				t.Fatalf("admission waited on the slow Redis: %v", err)
			}
			defer c.CloseNow()
			if mode == "local" {
				expectType(t, c, "Welcome")
			} else {
				expectErrorThenClose(t, c, refuseLimitsUnavailable)
			}
			waitForLog(t, h.logs, "Redis unreachable")
			if m := scrapeHandler(t, h); !strings.Contains(m, `dgrelay_redis_admission_seconds_count{result="error"} 1`) ||
				!strings.Contains(m, "dgrelay_redis_fallback 1") {
				t.Errorf("metrics:\n%s", grepLines(m, "redis"))
			}

			proxy.delay.Store(0)
			waitForLog(t, h.logs, "Redis reachable again")
			// Redis decides again: the first user's lease is there.
			expectRefused(t, h, "token="+userToken(t, "slow-"+mode), nil, 4429, "too many sessions")
		})
	}
}

// TestRedisDownAtStart: a Redis that cannot be reached does not stop the
// start; /readyz is ready and sessions are admitted on the instance's
// counters.
func TestRedisDownAtStart(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	port := freePort(t)
	logs := &lockedBuffer{}
	sig := make(chan os.Signal, 1)
	done := make(chan int)
	go func() {
		done <- run(context.Background(), envconfig.MapLookuper(map[string]string{
			"PORT": port, "METRICS_PORT": "0", "DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true",
			"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse",
			"REDIS_URL":          "redis://127.0.0.1:" + freePort(t), "MAX_SESSIONS_PER_USER": "1",
		}), logs, sig)
	}()
	waitForLog(t, logs, "dgrelay started")
	if resp := get(t, "http://127.0.0.1:"+port+"/readyz", nil); resp.StatusCode != 200 {
		t.Errorf("/readyz %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://127.0.0.1:"+port+"/ws/deepgram-proxy/", nil)
	if err != nil {
		t.Fatal(err)
	}
	expectType(t, c, "Welcome")
	c2, _, err := websocket.Dial(ctx, "ws://127.0.0.1:"+port+"/ws/deepgram-proxy/", nil)
	if err != nil {
		t.Fatal(err)
	}
	expectClose(t, c2, 4429) // never unlimited: the instance's own cap
	c.Close(websocket.StatusNormalClosure, "")
	sig <- syscall.SIGTERM
	if code := <-done; code != 0 {
		t.Fatalf("exit %d:\n%s", code, logs)
	}
	if n := strings.Count(logs.String(), "Redis unreachable"); n != 1 {
		t.Errorf("%d outage warnings, want one:\n%s", n, logs)
	}
}
