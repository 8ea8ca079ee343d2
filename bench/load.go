package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// dial opens a session and reads the first message (Welcome), returning
// the time that took.
func dial(ctx context.Context, url string) (*websocket.Conn, time.Duration, error) {
	start := time.Now()
	var opts *websocket.DialOptions
	if strings.HasPrefix(url, "wss:") {
		opts = &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: upstreamTLS}}}
	}
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		return nil, 0, err
	}
	c.SetReadLimit(1 << 20)
	typ, data, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		return nil, 0, fmt.Errorf("first message: %w", err)
	}
	if typ != websocket.MessageText || !bytes.Contains(data, []byte(`"Welcome"`)) {
		c.CloseNow()
		return nil, 0, fmt.Errorf("first message is not Welcome: %.40q", data)
	}
	return c, time.Since(start), nil
}

// echo writes msg and reads it back into buf, checking type and bytes.
func echo(ctx context.Context, c *websocket.Conn, typ websocket.MessageType, msg, buf []byte) error {
	if err := c.Write(ctx, typ, msg); err != nil {
		return err
	}
	gotTyp, r, err := c.Reader(ctx)
	if err != nil {
		return err
	}
	n, err := io.ReadFull(r, buf[:len(msg)])
	if err != nil {
		return err
	}
	if extra, _ := r.Read(buf[:1]); extra != 0 || gotTyp != typ || !bytes.Equal(buf[:n], msg) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

// percentiles returns p50 and p99 of ds.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)]
}

// latency runs n serial round trips of msg on one session.
func latency(url string, typ websocket.MessageType, size, n int) (p50, p99 time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, _, err := dial(ctx, url)
	if err != nil {
		return 0, 0, err
	}
	defer c.CloseNow()
	msg := bytes.Repeat([]byte{'x'}, size)
	if typ == websocket.MessageText {
		msg = append([]byte(`{"type":"InjectUserMessage","content":"`), bytes.Repeat([]byte{'a'}, size-42)...)
		msg = append(msg, `"}`...)
	}
	buf := make([]byte, len(msg)+1)
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n+n/10; i++ {
		start := time.Now()
		if err := echo(ctx, c, typ, msg, buf); err != nil {
			return 0, 0, err
		}
		if i >= n/10 { // the first tenth warms up
			ds = append(ds, time.Since(start))
		}
	}
	p50, p99 = percentiles(ds)
	return p50, p99, c.Close(websocket.StatusNormalClosure, "")
}

// openMany opens n idle sessions, parallelism at a time.
func openMany(url string, n int) ([]*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]*websocket.Conn, n)
	var firstErr error
	var mu sync.Mutex
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := dial(ctx, url)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

func closeAll(conns []*websocket.Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.CloseNow() }()
		}
	}
	wg.Wait()
}

// idleResult is what n open, silent sessions cost a proxy.
type idleResult struct {
	bytesPerSession      float64
	goroutinesPerSession float64
	// heap and stack bytes per session, from the Go runtime (dgrelay only)
	heapPerSession, stackPerSession float64
	// the same once every session has carried a message each way
	afterTalkPerSession, afterTalkHeapPerSession float64
}

func idleMemory(p *proxyPath, n int) (idleResult, error) {
	var res idleResult
	time.Sleep(500 * time.Millisecond)
	rss0 := rssBytes(p.procs())
	g0, heap0, stack0 := 0.0, 0.0, 0.0
	if p.goroutines != nil {
		g0, _ = p.goroutines()
		heap0, _ = p.gauge("go_memstats_heap_inuse_bytes")
		stack0, _ = p.gauge("go_memstats_stack_inuse_bytes")
	}
	conns, err := openMany(p.url, n)
	if err != nil {
		return res, err
	}
	defer closeAll(conns)
	time.Sleep(2 * time.Second) // let the proxy settle (Go: a GC cycle)
	res.bytesPerSession = (rssBytes(p.procs()) - rss0) / float64(n)
	if p.goroutines != nil {
		g1, err := p.goroutines()
		if err != nil {
			return res, err
		}
		res.goroutinesPerSession = (g1 - g0) / float64(n)
		heap1, _ := p.gauge("go_memstats_heap_inuse_bytes")
		stack1, _ := p.gauge("go_memstats_stack_inuse_bytes")
		res.heapPerSession, res.stackPerSession = (heap1-heap0)/float64(n), (stack1-stack0)/float64(n)
		if *heapProfile != "" {
			if err := saveProfile(strings.Replace(p.profileURL, "/profile", "/heap", 1), 0, *heapProfile); err != nil {
				return res, fmt.Errorf("heap profile: %w", err)
			}
		}
	}
	// Then every session carries one 16 KiB message each way, as a call
	// does before a pause, and is idle again: what buffers the proxy keeps
	// from that.
	if err := talkAll(conns, 16<<10); err != nil {
		return res, fmt.Errorf("talk: %w", err)
	}
	time.Sleep(2 * time.Second)
	res.afterTalkPerSession = (rssBytes(p.procs()) - rss0) / float64(n)
	if p.goroutines != nil {
		heap2, _ := p.gauge("go_memstats_heap_inuse_bytes")
		res.afterTalkHeapPerSession = (heap2 - heap0) / float64(n)
	}
	return res, nil
}

// talkAll echoes one message of size on every session, 32 at a time.
func talkAll(conns []*websocket.Conn, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var firstErr error
	var mu sync.Mutex
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	msg := make([]byte, size)
	for _, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := echo(ctx, c, websocket.MessageBinary, msg, make([]byte, size+1)); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// voiceResult is the proxy's cost under a realistic voice load.
type voiceResult struct {
	cpuPerSessionSecond time.Duration // proxy CPU (user+sys) per session-second
	// cpuPerMessage is the proxy's CPU per message it relayed (both ways):
	// unlike the per-session figure, it does not fall when the load core
	// falls short of the load it was asked for.
	cpuPerMessage      time.Duration
	probeP50, probeP99 time.Duration // a 640 B echo round trip under the load
	upRate, downRate   float64       // messages per second the load achieved
	loadBusy           float64       // share of the load core this tool used meanwhile
}

// voice runs n sessions of the voice profile for dur: up, 640 B of audio
// every 20 ms and a KeepAlive every 5 s; down (the fake's voice mode),
// 1,920 B every 40 ms and a JSON event every second. A probe session
// measures round trips meanwhile. The sessions are raw clients (see
// rawClient) so the load core keeps up.
func voice(p *proxyPath, n int, dur time.Duration) (voiceResult, error) {
	var res voiceResult
	url := p.url + "?" + fakedeepgram.VoiceQuery
	clients := make([]*rawClient, 0, n)
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := dialRaw(url, 10*time.Second)
		if err != nil {
			return res, fmt.Errorf("voice session %d: %w", i, err)
		}
		clients = append(clients, c)
	}
	stop := make(chan struct{})
	var up, down, failures atomic.Int64
	var firstFailure atomic.Value
	fail := func(err error) {
		select {
		case <-stop:
		default:
			failures.Add(1)
			firstFailure.CompareAndSwap(nil, err.Error())
		}
	}
	audio := clientFrame(0x2, make([]byte, 640))
	keepAlive := clientFrame(0x1, []byte(`{"type":"KeepAlive"}`))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(2)
		go func() { // the microphone, staggered so ticks spread over 20 ms
			defer wg.Done()
			time.Sleep(time.Duration(i) * 20 * time.Millisecond / time.Duration(n))
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for k := 1; ; k++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := c.conn.Write(audio); err != nil {
					fail(err)
					return
				}
				up.Add(1)
				if k%250 == 0 {
					if _, err := c.conn.Write(keepAlive); err != nil {
						fail(err)
						return
					}
				}
			}
		}()
		go func() { // the speaker
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				fin, closed, err := c.skim(buf)
				if err != nil || closed {
					if err == nil {
						err = errors.New("closed by the proxy")
					}
					fail(err)
					return
				}
				if fin {
					down.Add(1)
				}
			}
		}()
	}
	time.Sleep(2 * time.Second) // every session up to speed

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	probe, _, err := dial(ctx, p.url)
	if err != nil {
		close(stop)
		return res, err
	}
	defer probe.CloseNow()
	var pids []int
	if p.procs != nil {
		pids = p.procs()
	}
	cpu0, up0, down0, t0 := cpuSeconds(pids), up.Load(), down.Load(), time.Now()
	self0 := selfCPU()
	if *selfProfile != "" && p.name == "direct" {
		f, err := os.Create(*selfProfile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	profiled := make(chan error, 1)
	if *cpuProfile != "" && p.profileURL != "" {
		go func() { profiled <- saveProfile(p.profileURL, int(dur.Seconds()), *cpuProfile) }()
	} else {
		profiled <- nil
	}
	var ds []time.Duration
	msg, buf := make([]byte, 640), make([]byte, 641)
	for time.Since(t0) < dur {
		start := time.Now()
		if err := echo(ctx, probe, websocket.MessageBinary, msg, buf); err != nil {
			close(stop)
			return res, fmt.Errorf("probe: %w", err)
		}
		ds = append(ds, time.Since(start))
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(t0).Seconds()
	cpu := cpuSeconds(pids) - cpu0
	res.loadBusy = (selfCPU() - self0) / elapsed
	if err := <-profiled; err != nil {
		close(stop)
		return res, fmt.Errorf("cpu profile: %w", err)
	}
	res.upRate = float64(up.Load()-up0) / elapsed
	res.downRate = float64(down.Load()-down0) / elapsed
	close(stop)
	for _, c := range clients {
		c.conn.Close()
	}
	wg.Wait()
	clients = nil
	if f := failures.Load(); f > 0 {
		return res, fmt.Errorf("%d voice sessions failed, the first with: %v", f, firstFailure.Load())
	}
	res.cpuPerSessionSecond = time.Duration(cpu / (float64(n) * elapsed) * float64(time.Second))
	if msgs := (res.upRate + res.downRate) * elapsed; msgs > 0 {
		res.cpuPerMessage = time.Duration(cpu / msgs * float64(time.Second))
	}
	res.probeP50, res.probeP99 = percentiles(ds)
	return res, nil
}

// connectTimes dials n sessions one after another, timing dial to Welcome.
func connectTimes(url string, n int) (p50, p99 time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		c, d, err := dial(ctx, url)
		if err != nil {
			return 0, 0, err
		}
		ds = append(ds, d)
		c.Close(websocket.StatusNormalClosure, "")
	}
	p50, p99 = percentiles(ds)
	return p50, p99, nil
}

// ceiling echoes 64 KiB binary frames on 4 sessions, 4 in flight each, for
// dur, and returns the relayed MB/s one way.
func ceiling(url string, dur time.Duration) (float64, error) {
	const sessions, inFlight, size = 4, 4, 64 << 10
	ctx, cancel := context.WithTimeout(context.Background(), dur+time.Minute)
	defer cancel()
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	deadline := time.Now().Add(dur)
	for s := 0; s < sessions; s++ {
		c, _, err := dial(ctx, url)
		if err != nil {
			return 0, err
		}
		defer c.CloseNow()
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := make(chan struct{}, inFlight)
			msg := make([]byte, size)
			go func() {
				for time.Now().Before(deadline) {
					window <- struct{}{}
					if c.Write(ctx, websocket.MessageBinary, msg) != nil {
						return
					}
				}
				close(window)
			}()
			buf := make([]byte, 32<<10)
			for range window {
				_, r, err := c.Reader(ctx)
				if err != nil {
					errs <- err
					return
				}
				n, _ := io.CopyBuffer(io.Discard, r, buf)
				total.Add(n)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / time.Since(start).Seconds() / 1e6, nil
}

// selfCPU is the user+system CPU seconds this tool (the load and the fake
// upstream) has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
