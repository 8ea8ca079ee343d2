package redislimits

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/testredis"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// startRedis runs a redis-server until t ends (internal/testredis) and
// returns its URL.
func startRedis(t *testing.T) string {
	t.Helper()
	return testredis.Start(t).URL()
}

// testMetrics are series of the names the relay gives them, unregistered.
func testMetrics() Metrics {
	return Metrics{
		Admission: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "a"}, []string{"result"}),
		Errors:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"op"}),
		Fallback:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "f"}),
	}
}

// newLimits makes the limits on url with cfg's limits, closed when t ends.
func newLimits(t *testing.T, url string, cfg Config) *Limits {
	t.Helper()
	cfg.URL, cfg.Timeout, cfg.KeyPrefix, cfg.LeaseTTL, cfg.Metrics = url, 2*time.Second, "dgrelay:", 15*time.Second, testMetrics()
	sl, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sl.Close)
	return sl
}

// redisClient is a client of url for the test to look inside.
func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestAdmitRefusals: each limit is named by its Refusal, the quota's with
// the day's time so far.
func TestAdmitRefusals(t *testing.T) {
	url := startRedis(t)
	sl := newLimits(t, url, Config{MaxSessionsPerUser: 2, SessionRatePerMinute: 3, MaxUserSecondsPerDay: 1})
	for i, want := range []Refusal{None, None, UserSessions} {
		if got, _, err := sl.Admit("u1", "s"+strconv.Itoa(i)); err != nil || got != want {
			t.Errorf("u1's session %d: %v %v, want %v", i, got, err, want)
		}
	}
	// The rate: u1 has opened 2 (the refused one took no token), so one
	// more passes the cap once a place is free.
	if err := sl.End(sl.LeaseKeys("u1", "s0"), "s0", 0, 0, false); err != nil {
		t.Fatal(err)
	}
	if got, _, err := sl.Admit("u1", "s3"); err != nil || got != None {
		t.Errorf("u1's third: %v %v", got, err)
	}
	if err := sl.End(sl.LeaseKeys("u1", "s1"), "s1", 0, 0, false); err != nil {
		t.Fatal(err)
	}
	if got, _, err := sl.Admit("u1", "s4"); err != nil || got != UserRate {
		t.Errorf("u1's fourth in a minute: %v %v, want UserRate", got, err)
	}
	// The quota: a second of session time spends the day's.
	if got, _, err := sl.Admit("u2", "q1"); err != nil || got != None {
		t.Fatalf("u2: %v %v", got, err)
	}
	if err := sl.End(sl.LeaseKeys("u2", "q1"), "q1", 1000, 0, false); err != nil {
		t.Fatal(err)
	}
	if got, used, err := sl.Admit("u2", "q2"); err != nil || got != Quota || used != time.Second {
		t.Errorf("u2 past the quota: %v %v %v", got, used, err)
	}
}

// TestLateCallsChangeNothing: a renewal sent again (its answer lost) adds
// nothing twice; a renewal or an admission of a session that lands after
// the session's end (held in the network past REDIS_TIMEOUT) neither brings
// its lease back nor adds time nor takes a rate token. The scripts in a
// real redis-server, called as the relay calls them.
func TestLateCallsChangeNothing(t *testing.T) {
	url := startRedis(t)
	sl := newLimits(t, url, Config{MaxSessionsPerUser: 2, MaxUserSecondsPerDay: 3600, SessionRatePerMinute: 2})
	const user = "0123456789abcdef0123456789abcdef" // a userKey
	leases, rate, day := sl.Keys(user)
	rc := redisClient(t, url)
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
		if err := sl.Renew([]Lease{{Keys: sl.LeaseKeys(user, "s1"), ID: "s1", Total: total, Base: base}}); err != nil {
			t.Fatal(err)
		}
	}
	if refused, _, err := sl.Admit(user, "s1"); err != nil || refused != None {
		t.Fatalf("admit: %v %v", err, refused)
	}
	renew(1000, 0)
	renew(1000, 0) // the same round sent again: its answer was lost
	expect("a renewal sent twice", 1000, 1)
	renew(2500, 0)
	renew(2000, 0) // an older renewal landing after a newer one
	expect("renewals out of order", 2500, 1)
	if err := sl.End(sl.LeaseKeys(user, "s1"), "s1", 3000, 2500, false); err != nil {
		t.Fatal(err)
	}
	expect("the end", 3000, 0)
	renew(2500, 2500) // held in the network until after the end
	expect("a renewal after the end", 3000, 0)

	// A withdrawal that lands before the admission it withdraws.
	tat := rc.Get(ctx, rate).Val()
	if err := sl.End(sl.LeaseKeys(user, "s2"), "s2", 0, 0, true); err != nil {
		t.Fatal(err)
	}
	if refused, _, err := sl.Admit(user, "s2"); err != nil || refused != Withdrawn {
		t.Errorf("a withdrawn session's admission: %v %v", err, refused)
	}
	expect("an admission after its withdrawal", 3000, 0)
	if got := rc.Get(ctx, rate).Val(); got != tat {
		t.Errorf("an admission after its withdrawal took a rate token: %s, was %s", got, tat)
	}
}

// TestFleetCap: MaxTotalSessions counts every user's leases together, on
// any number of Limits (instances): the user's own caps are named first, a
// session refused by the fleet's takes no rate token, an end frees its
// place at once and a lease nobody renews lapses. Off, no fleet key is kept.
func TestFleetCap(t *testing.T) {
	url := startRedis(t)
	cfg := Config{MaxSessionsPerUser: 1, SessionRatePerMinute: 2, MaxTotalSessions: 2}
	a, b := newLimits(t, url, cfg), newLimits(t, url, cfg)
	for _, step := range []struct {
		sl       *Limits
		user, id string
		want     Refusal
	}{
		{a, "u1", "s1", None},
		{b, "u2", "s2", None},
		{a, "u1", "s3", UserSessions}, // the user's cap first
		{b, "u3", "s4", TotalSessions},
		{a, "u3", "s5", TotalSessions},
	} {
		if got, _, err := step.sl.Admit(step.user, step.id); err != nil || got != step.want {
			t.Errorf("%s's %s: %v %v, want %v", step.user, step.id, got, err, step.want)
		}
	}
	rc := redisClient(t, url)
	ctx := context.Background()
	if n := rc.ZCard(ctx, a.FleetKey()).Val(); n != 2 {
		t.Errorf("%d leases in the fleet's set, want 2", n)
	}
	if err := b.End(b.LeaseKeys("u2", "s2"), "s2", 0, 0, false); err != nil {
		t.Fatal(err)
	}
	// u3 was refused twice, spending none of its rate (2 a minute): two
	// admissions now pass the rate, the second refused by the cap.
	if got, _, err := a.Admit("u3", "s6"); err != nil || got != None {
		t.Errorf("u3 after an end: %v %v", got, err)
	}
	// A lease that is never renewed lapses: the fleet's place comes back.
	short := newLimits(t, url, cfg)
	short.ttl = 200 * time.Millisecond
	if err := a.End(a.LeaseKeys("u1", "s1"), "s1", 0, 0, false); err != nil {
		t.Fatal(err)
	}
	if got, _, err := short.Admit("u4", "s7"); err != nil || got != None {
		t.Fatalf("u4: %v %v", got, err)
	}
	if got, _, _ := a.Admit("u5", "s8"); got != TotalSessions {
		t.Errorf("u5 while u4's lease lives: %v, want TotalSessions", got)
	}
	time.Sleep(300 * time.Millisecond)
	if got, _, err := a.Admit("u5", "s9"); err != nil || got != None {
		t.Errorf("u5 after u4's lease lapsed: %v %v", got, err)
	}
	if got, _, err := a.Admit("u3", "s10"); err != nil || got != UserSessions {
		t.Errorf("u3 again: %v %v, want UserSessions", got, err)
	}

	off := newLimits(t, url, Config{KeyPrefix: "off:"})
	if off.FleetKey() != "" || len(off.LeaseKeys("u", "s")) != 4 {
		t.Errorf("cap off: fleet key %q, lease keys %v", off.FleetKey(), off.LeaseKeys("u", "s"))
	}
}

// TestDown: a Redis that cannot be reached fails the call, counts it and
// begins an outage, during which Admit answers ErrDown at once; the first
// answered call ends it.
func TestDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there
	sl := newLimits(t, "redis://"+addr, Config{MaxSessionsPerUser: 1})
	if _, _, err := sl.Admit("u", "s1"); err == nil || err == ErrDown || !sl.Down() {
		t.Fatalf("first call: %v, down %v", err, sl.Down())
	}
	if _, _, err := sl.Admit("u", "s2"); err != ErrDown {
		t.Fatalf("during the outage: %v", err)
	}
	if sl.Host() != addr {
		t.Errorf("host %q", sl.Host())
	}
}

// FuzzParseURL: whatever REDIS_URL holds, ParseURL does not panic, and its
// error never quotes a password. Seeded at the edges of what it takes.
func FuzzParseURL(f *testing.F) {
	for _, raw := range []string{
		"redis://127.0.0.1:6379", "rediss://default:pass@db.upstash.io:6379", "redis://:pass@10.0.0.3:6379/2",
		"redis://:pass@10.0.0.3:6379/15", "redis://:pass@10.0.0.3:6379/x", "http://user:pass@redis.internal:6379",
		"redis://user:pass@redis.internal:port", "rediss://user:pass@/0", "redis.internal:6379", "redis://[::1]:6379",
		"redis://:p%41ss@h:1", "redis://:pass@h:1?dial_timeout=x", "",
	} {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		_, err := ParseURL(raw)
		if err == nil {
			return
		}
		if u, perr := parseUserinfo(raw); perr == nil && len(u) >= 4 && strings.Contains(err.Error(), u) {
			t.Fatalf("%q: the error quotes the password: %v", raw, err)
		}
	})
}

// parseUserinfo is the password in raw, as a URL parser reads it.
func parseUserinfo(raw string) (string, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return "", err
	}
	return opts.Password, nil
}
