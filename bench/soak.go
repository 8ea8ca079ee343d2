package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// soakResult is what churning sessions through dgrelay left behind.
type soakResult struct {
	sessions         int64
	goroutinesBefore float64
	goroutinesAfter  float64
	fdsBefore        float64
	fdsAfter         float64
}

// soakEndings are the ways a soak session ends, taken in turn, each with the
// close the client must get.
var soakEndings = []struct {
	name string
	run  func(ctx context.Context, url string) error
}{
	{"client closes", func(ctx context.Context, url string) error {
		c, _, err := dial(ctx, url)
		if err != nil {
			return err
		}
		return c.Close(websocket.StatusNormalClosure, "")
	}},
	{"client drops its socket", func(ctx context.Context, url string) error {
		c, _, err := dial(ctx, url)
		if err != nil {
			return err
		}
		return c.CloseNow()
	}},
	{"a message, then the client drops", func(ctx context.Context, url string) error {
		c, _, err := dial(ctx, url)
		if err != nil {
			return err
		}
		defer c.CloseNow()
		msg := make([]byte, 640)
		return echo(ctx, c, websocket.MessageBinary, msg, make([]byte, 641))
	}},
	{"Deepgram closes", func(ctx context.Context, url string) error {
		return expectEnd(ctx, url, `{"type":"Fake.Close","code":4000,"reason":"bye"}`, 4000)
	}},
	{"Deepgram vanishes", func(ctx context.Context, url string) error {
		return expectEnd(ctx, url, `{"type":"Fake.Vanish"}`, websocket.StatusBadGateway)
	}},
	{"the client breaks the protocol", func(ctx context.Context, url string) error {
		c, err := dialRaw(url, 10*time.Second)
		if err != nil {
			return err
		}
		defer c.conn.Close()
		_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.conn.Write([]byte{0x82, 0x01, 0x00}); err != nil { // unmasked
			return err
		}
		scratch := make([]byte, 2048)
		for {
			_, closed, err := c.skim(scratch)
			if err != nil {
				return fmt.Errorf("no close frame after a protocol error: %w", err)
			}
			if closed {
				return nil
			}
		}
	}},
}

// expectEnd sends cmd to the fake through url and expects the session to end
// with code.
func expectEnd(ctx context.Context, url, cmd string, code websocket.StatusCode) error {
	c, _, err := dial(ctx, url)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte(cmd)); err != nil {
		return err
	}
	for {
		if _, _, err := c.Read(ctx); err != nil {
			if got := websocket.CloseStatus(err); got != code {
				return fmt.Errorf("closed with %d (%v), want %d", got, err, code)
			}
			return nil
		}
	}
}

// soak opens and ends sessions, workers at a time, for dur, each ending one
// of soakEndings' ways, then waits for dgrelay to have no session left and
// compares its goroutines and open descriptors with before: a session that
// leaks either shows after a few thousand. It asserts no speed; a leak or a
// wrong close fails it.
func soak(p *proxyPath, workers int, dur time.Duration) (soakResult, error) {
	var res soakResult
	ctx, cancel := context.WithTimeout(context.Background(), dur+time.Minute)
	defer cancel()
	// One session per worker at once first, so that what grows with load
	// and stays (Redis's connection pool) is there before the count.
	var warm sync.WaitGroup
	for range workers {
		warm.Add(1)
		go func() {
			defer warm.Done()
			_ = soakEndings[0].run(ctx, p.url)
		}()
	}
	warm.Wait()
	if err := waitNoSessions(p); err != nil {
		return res, err
	}
	// The last sessions' handlers return (with Redis, after ending their
	// leases) before the count is taken, as after the soak.
	time.Sleep(time.Second)
	var err error
	if res.goroutinesBefore, err = p.goroutines(); err != nil {
		return res, err
	}
	if res.fdsBefore, err = p.gauge("process_open_fds"); err != nil {
		return res, err
	}
	deadline := time.Now().Add(dur)
	var sessions atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; time.Now().Before(deadline); k += workers {
				ending := soakEndings[k%len(soakEndings)]
				if err := ending.run(ctx, p.url); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%s: %w", ending.name, err)
					}
					mu.Unlock()
					return
				}
				sessions.Add(1)
			}
		}()
	}
	wg.Wait()
	res.sessions = sessions.Load()
	if firstErr != nil {
		return res, firstErr
	}
	if err := waitNoSessions(p); err != nil {
		return res, err
	}
	time.Sleep(time.Second) // the last handlers return
	if res.goroutinesAfter, err = p.goroutines(); err != nil {
		return res, err
	}
	if res.fdsAfter, err = p.gauge("process_open_fds"); err != nil {
		return res, err
	}
	// A few goroutines and descriptors come and go with the runtime and the
	// listener (the metrics scrape's own connection among them).
	if res.goroutinesAfter > res.goroutinesBefore+soakSlack || res.fdsAfter > res.fdsBefore+soakSlack {
		return res, fmt.Errorf("after %d sessions: goroutines %.0f -> %.0f, open descriptors %.0f -> %.0f",
			res.sessions, res.goroutinesBefore, res.goroutinesAfter, res.fdsBefore, res.fdsAfter)
	}
	return res, nil
}

// soakSlack is how many goroutines or descriptors more than before still
// count as none leaked.
const soakSlack = 8

// waitNoSessions waits for dgrelay to report no live session.
func waitNoSessions(p *proxyPath) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := scrapeSum(p.metricsURL, "dgrelay_sessions_active")
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%.0f sessions still live 30 s after the load stopped", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrapeSum adds up every series of the metric name, whatever its labels (0
// when it has none yet).
func scrapeSum(url, name string) (float64, error) {
	lines, err := metricLines(url)
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, line := range lines {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}
