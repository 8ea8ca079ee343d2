package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// pumpPair is one pump between two real loopback WebSocket connections: the
// benchmark writes into src's peer and reads from dst's peer, both without
// allocating, so allocs/op is the pump's own.
type pumpPair struct {
	in, out   *websocket.Conn // the benchmark's ends
	done      chan pumpError
	closeSrvs func()
}

func newPumpPair(b *testing.B, text textFilter) *pumpPair {
	b.Helper()
	accepted := make(chan *websocket.Conn, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.SetReadLimit(1 << 20)
		accepted <- c
	}))
	dial := func() *websocket.Conn {
		c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		if err != nil {
			b.Fatal(err)
		}
		c.SetReadLimit(1 << 20)
		return c
	}
	in := dial()
	src := <-accepted
	// dst is a client-side conn, as the relay's upstream is: it masks.
	out := dial()
	dstServer := <-accepted
	p := &pumpPair{in: in, out: dstServer, done: make(chan pumpError, 1)}
	var f flow
	go func() { p.done <- pump(src, out, &f, text) }()
	p.closeSrvs = func() {
		in.CloseNow()
		src.CloseNow()
		out.CloseNow()
		dstServer.CloseNow()
		<-p.done
		srv.Close()
	}
	return p
}

// BenchmarkPump relays one binary message per op through the pump: the
// per-frame hot path, for -benchmem and -cpuprofile. The policy variants run
// the same audio with a Settings policy in force: binary frames never reach
// it, so they cost the same.
func BenchmarkPump(b *testing.B) {
	policy, err := loadPolicy(context.Background(), benchPolicy, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	filters := []struct {
		name string
		text textFilter
	}{
		{"policy=off", nil},
		{"policy=on", func(msg []byte) policyVerdict { return policy.check(msg) }},
	}
	for _, size := range []int{640, 8192, 64 << 10} {
		for _, f := range filters {
			b.Run(strconv.Itoa(size)+"B/"+f.name, func(b *testing.B) {
				benchmarkPump(b, size, f.text)
			})
		}
	}
}

// benchPolicy pins a model and allows a few paths, as a real one would.
const benchPolicy = `{"set":{"agent":{"think":{"provider":{"type":"open_ai","model":"gpt-4o-mini"}}}},
  "allow":["audio","agent.language","agent.greeting","agent.think.prompt"],"on_violation":"strip"}`

func benchmarkPump(b *testing.B, size int, text textFilter) {
	p := newPumpPair(b, text)
	defer p.closeSrvs()
	msg := make([]byte, size)
	buf := make([]byte, size)
	ctx := context.Background()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.in.Write(ctx, websocket.MessageBinary, msg); err != nil {
			b.Fatal(err)
		}
		_, r, err := p.out.Reader(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf); err != nil {
			b.Fatal(err)
		}
		// A message longer than the copy buffer ends with an empty
		// final frame; reading to EOF consumes it.
		if n, err := r.Read(buf[:1]); n != 0 || err != io.EOF {
			b.Fatalf("message longer than sent: %d, %v", n, err)
		}
	}
}
