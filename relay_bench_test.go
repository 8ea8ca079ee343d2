package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// pipePair is a session's two pipes between real loopback sockets: the
// benchmark writes client frames into in and reads them from out, both
// without allocating, so allocs/op is the relay's own.
type pipePair struct {
	in, out net.Conn // the benchmark's ends: the browser and Deepgram
	done    chan struct{}
}

// loopbackPair is two connected TCP sockets on 127.0.0.1.
func loopbackPair(tb testing.TB) (dialled, accepted net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	return d, a
}

// pipeRelay is the part of a relay that a session's pipes use, for tests
// that run pipes over sockets of their own.
func pipeRelay(policy *settingsPolicy) *relay {
	return &relay{cfg: &Config{MaxMessageBytes: 1 << 20}, policy: policy, texts: newTextBudget(1 << 20),
		scrub: newScrubber(testAPIKey, policy.secretValues())}
}

func newPipePair(b *testing.B, policy *settingsPolicy) *pipePair {
	b.Helper()
	in, clientSide := loopbackPair(b)
	upstreamSide, out := loopbackPair(b)
	s := &session{
		relay:    pipeRelay(policy),
		userText: new(atomic.Int64),
		client:   newPeer(&handoffConn{Conn: clientSide}, sideClient),
		upstream: newPeer(&handoffConn{Conn: upstreamSide}, sideUpstream),
	}
	p := &pipePair{in: in, out: out, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		s.run()
	}()
	return p
}

func (p *pipePair) close() {
	p.in.Close()
	p.out.Close()
	<-p.done
}

// BenchmarkPipe relays one binary message per op from the client's socket to
// Deepgram's: the per-frame hot path, for -benchmem and -cpuprofile. The
// policy variants run the same audio with a Settings policy in force: binary
// frames never reach it, so they cost the same.
func BenchmarkPipe(b *testing.B) {
	policy, err := loadPolicy(context.Background(), benchPolicy, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{640, 8192, 64 << 10} {
		for _, pol := range []struct {
			name   string
			policy *settingsPolicy
		}{{"policy=off", nil}, {"policy=on", policy}} {
			b.Run(strconv.Itoa(size)+"B/"+pol.name, func(b *testing.B) {
				benchmarkPipe(b, size, pol.policy)
			})
		}
	}
}

// benchPolicy pins a model and allows a few paths, as a real one would.
const benchPolicy = `{"set":{"agent":{"think":{"provider":{"type":"open_ai","model":"gpt-4o-mini"}}}},
  "allow":["audio","agent.language","agent.greeting","agent.think.prompt"],"on_violation":"strip"}`

func benchmarkPipe(b *testing.B, size int, policy *settingsPolicy) {
	p := newPipePair(b, policy)
	defer p.close()
	frame := appendFrame(nil, opBinary, make([]byte, size), true)
	got := make([]byte, len(frame))
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.in.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(p.out, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if string(got) != string(frame) {
		b.Fatal("the frame arrived changed")
	}
}

// BenchmarkPipeTLS relays one binary message per op from Deepgram over TLS to
// the client's socket: production's downstream path. The benchmark's TLS
// server end encrypts in the same process, so ns/op holds both ends' crypto.
func BenchmarkPipeTLS(b *testing.B) {
	for _, size := range []int{1920, 64 << 10} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			benchmarkPipeTLS(b, size)
		})
	}
}

func benchmarkPipeTLS(b *testing.B, size int) {
	r := newTLSRig(b, selfSigned(b))
	r.capture.mu.Lock()
	r.capture.capture = false // Deepgram's records go straight to the socket
	r.capture.mu.Unlock()
	r.start()
	in, out := r.server, r.out
	frame := appendFrame(nil, opBinary, make([]byte, size), false)
	got := make([]byte, len(frame))
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := in.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(out, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if string(got) != string(frame) {
		b.Fatal("the frame arrived changed")
	}
}

// selfSigned is a certificate for deepgram.test, made for one test.
func selfSigned(b testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		DNSNames:              []string{"deepgram.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
