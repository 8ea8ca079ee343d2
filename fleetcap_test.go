package main

import (
	"context"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// expectCapacity: a session dialled on h is refused in band by the fleet's
// cap (CAPACITY_REACHED, 1013), without dialling Deepgram.
func expectCapacity(t *testing.T, h *harness, query string) {
	t.Helper()
	before := len(h.fake.Handshakes())
	expectErrorThenClose(t, h.dialOK(query), refuseCapacity)
	if n := len(h.fake.Handshakes()); n != before {
		t.Error("a session refused at capacity dialled Deepgram")
	}
}

// TestFleetCap: MAX_TOTAL_SESSIONS counts the sessions of both instances
// together, whoever their users: over it, CAPACITY_REACHED in band, its
// repeat 503 with Retry-After before the upgrade; a session that ends on
// one instance frees a place on the other.
func TestFleetCap(t *testing.T) {
	rs := startRedis(t)
	a, b := twoInstances(t, rs.URL(), map[string]string{"MAX_TOTAL_SESSIONS": "2"})
	alice := a.dial("token=" + userToken(t, "alice"))
	expectType(t, alice, "Welcome")
	expectType(t, b.dial("token="+userToken(t, "bob")), "Welcome")
	rc := redisClient(t, rs.URL())
	if n := rc.ZCard(context.Background(), a.relay.shared.FleetKey()).Val(); n != 2 {
		t.Errorf("%d leases in the fleet's set, want 2", n)
	}

	carol := "token=" + userToken(t, "carol")
	expectCapacity(t, a, carol)
	expectCapacity(t, b, carol) // each instance tells a user once
	expectBeforeUpgrade(t, b, carol, http.StatusServiceUnavailable)

	alice.Close(websocket.StatusNormalClosure, "")
	a.settled()
	expectType(t, b.dial("token="+userToken(t, "dave")), "Welcome")
	expectCapacity(t, a, "token="+userToken(t, "erin"))
	if !strings.Contains(scrapeHandler(t, a), `dgrelay_refusals_total{reason="capacity"} 2`) {
		t.Errorf("refusals:\n%s", grepLines(scrapeHandler(t, a), "dgrelay_refusals_total"))
	}
}

// TestFleetCapOnInstance: without Redis, MAX_TOTAL_SESSIONS caps the
// instance's sessions, with the same answer; MAX_SESSIONS, when lower, is
// named first (INSTANCE_FULL: another instance may take it).
func TestFleetCapOnInstance(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"MAX_TOTAL_SESSIONS": "1"}), fakedeepgram.Options{})
	expectType(t, h.dial("token="+userToken(t, "alice")), "Welcome")
	expectCapacity(t, h, "token="+userToken(t, "bob"))

	full := newHarness(t, authEnv(map[string]string{"MAX_TOTAL_SESSIONS": "1", "MAX_SESSIONS": "1"}), fakedeepgram.Options{})
	expectType(t, full.dial("token="+userToken(t, "alice")), "Welcome")
	expectErrorThenClose(t, full.dialOK("token="+userToken(t, "bob")), refuseFull)
}

// TestFleetCapRedisDown: while Redis is away, REDIS_FAILURE=local caps each
// instance at MAX_TOTAL_SESSIONS on its own count, as the per-user caps
// are; once Redis is back (empty: no persistence) the live leases are
// there again and Redis decides: the fleet is over its cap. Under
// REDIS_FAILURE=refuse, new sessions are refused (LIMITS_UNAVAILABLE).
func TestFleetCapRedisDown(t *testing.T) {
	shortLeases(t, 100*time.Millisecond, 300*time.Millisecond)
	rs := startRedis(t)
	a, b := twoInstances(t, rs.URL(), map[string]string{"MAX_TOTAL_SESSIONS": "2"})
	expectType(t, a.dial("token="+userToken(t, "alice")), "Welcome")
	expectType(t, a.dial("token="+userToken(t, "bob")), "Welcome")
	expectCapacity(t, b, "token="+userToken(t, "carol"))

	rs.Stop()
	// b holds none of the fleet's sessions: its own count admits two.
	expectType(t, b.dial("token="+userToken(t, "dave")), "Welcome")
	waitForLog(t, b.logs, "Redis unreachable: per-user limits and MAX_TOTAL_SESSIONS count on this instance only")
	expectType(t, b.dial("token="+userToken(t, "erin")), "Welcome")
	expectCapacity(t, b, "token="+userToken(t, "fay"))
	waitForLog(t, a.logs, "Redis unreachable") // a's renewals fail too

	rs.Start()
	waitForLog(t, a.logs, "Redis reachable again")
	waitForLog(t, b.logs, "Redis reachable again")
	rc := redisClient(t, rs.URL())
	waitFor(t, func() bool { return rc.ZCard(context.Background(), a.relay.shared.FleetKey()).Val() == 4 })
	expectCapacity(t, a, "token="+userToken(t, "gus"))

	refusing := newHarness(t, authEnv(map[string]string{"REDIS_URL": rs.URL(), "MAX_TOTAL_SESSIONS": "10", "REDIS_FAILURE": "refuse"}), fakedeepgram.Options{})
	rs.Stop()
	expectErrorThenClose(t, refusing.dialOK("token="+userToken(t, "hal")), refuseLimitsUnavailable)
}

// TestFleetLeaseLapsesAfterSIGKILL: an instance killed without a drain
// holds its places in the fleet's cap only until their leases lapse: the
// other instance admits again within 20 s. The built binary, with the real
// lease periods (renewed every 5 s, lapsing after 15).
func TestFleetLeaseLapsesAfterSIGKILL(t *testing.T) {
	rs := startRedis(t)
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	killed := startProcess(t, fake, "REDIS_URL="+rs.URL(), "MAX_TOTAL_SESSIONS=1")
	killed.dial(t)
	// Another user on the other instance: the fleet's cap refuses it,
	// not the user's. REFUSAL_WINDOW=0: every refusal in band.
	other := newHarness(t, authEnv(map[string]string{"REDIS_URL": rs.URL(), "MAX_TOTAL_SESSIONS": "1", "REFUSAL_WINDOW": "0"}), fakedeepgram.Options{})
	ivy := "token=" + userToken(t, "ivy")
	expectCapacity(t, other, ivy)

	if err := killed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	killed.waitExit(t, 5*time.Second)
	for {
		c := other.dialOK(ivy)
		typ, data, err := readErr(c)
		if err == nil && typ == websocket.MessageText && strings.Contains(string(data), `"Welcome"`) {
			break
		}
		if err == nil && !strings.Contains(string(data), "CAPACITY_REACHED") {
			t.Fatalf("refused with %s", data)
		}
		c.CloseNow()
		if time.Since(at) > 20*time.Second {
			t.Fatalf("the killed instance's place is still held %s after SIGKILL", time.Since(at).Round(time.Second))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the place was free again %s after SIGKILL", time.Since(at).Round(100*time.Millisecond))
}
