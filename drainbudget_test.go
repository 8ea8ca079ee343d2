package main

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
)

// hangingListener accepts connections on 127.0.0.1 and never answers on
// them: a Redis, or a webhook, that has stopped. It returns host:port.
func hangingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 1024)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c:
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	})
	return ln.Addr().String()
}

// TestDrainBudget measures the built relay's worst shutdown with Cloud Run's
// settings (DRAIN_TIMEOUT 8 s, SIGKILL 10 s after SIGTERM): a Redis and a
// webhook that accept connections and never answer, live sessions whose
// clients never answer the 1012 close, and REDIS_TIMEOUT at its default and
// at its most (2 s). The process must exit within 9 s of SIGTERM, leaving
// Cloud Run's SIGKILL a second of margin.
func TestDrainBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the drain runs its 8 s")
	}
	const budget = 9 * time.Second
	for _, redisTimeout := range []string{"500ms", "2s"} {
		fake := fakedeepgram.Start(fakedeepgram.Options{ClientTimeout: -1})
		p := startProcess(t, fake, "DRAIN_TIMEOUT=8s", "REDIS_URL=redis://"+hangingListener(t), "REDIS_TIMEOUT="+redisTimeout,
			"CONVERSATION_WEBHOOK=http://"+hangingListener(t)+"/hook", "CONVERSATION_WEBHOOK_SECRET=whsec-drain-budget-test-0123456789")
		for range 3 {
			c := p.dial(t) // Welcome read, then never read again: the close is not answered
			write(t, c, 1, []byte(minimalSettings))
		}
		time.Sleep(500 * time.Millisecond) // Settings reach Deepgram
		signalled := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		code := p.waitExit(t, 15*time.Second)
		took := time.Since(signalled)
		t.Logf("REDIS_TIMEOUT=%s: exit %d after %s (margin to Cloud Run's SIGKILL: %s)", redisTimeout, code, took.Round(time.Millisecond),
			(10*time.Second - took).Round(time.Millisecond))
		if code != 0 || took > budget {
			t.Errorf("REDIS_TIMEOUT=%s: exit %d after %s, want 0 within %s:\n%s", redisTimeout, code, took, budget, p.logs.String())
		}
		// The three records the dead webhook never took are counted and
		// logged before the exit, hanging Redis or not.
		if n := strings.Count(p.logs.String(), `"reason":"shutdown"`); n != 3 {
			t.Errorf("REDIS_TIMEOUT=%s: %d records logged dropped at shutdown, want 3", redisTimeout, n)
		}
		if !strings.Contains(p.logs.String(), "drain deadline: closing sessions") {
			t.Errorf("the sessions did not last to the drain's deadline:\n%s", p.logs.String())
		}
		fake.Close()
	}
}
