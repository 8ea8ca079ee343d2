package wspipe

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

// selfSigned is a certificate for deepgram.test, made for one test.
func selfSigned(tb testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		tb.Fatal(err)
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
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// captureConn passes a TLS server's handshake through to its socket, then
// keeps what the server writes, so that a test can deliver its records cut
// anywhere.
type captureConn struct {
	net.Conn
	mu       sync.Mutex
	capture  bool
	captured []byte
}

func (c *captureConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.capture {
		c.captured = append(c.captured, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *captureConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.captured
	c.captured = nil
	return b
}

// tlsRig is a session whose upstream is TLS over loopback: the test writes
// Deepgram's records into deepgram as it likes and reads the client's end.
type tlsRig struct {
	server               *tls.Conn // Deepgram's TLS end, writing into capture
	capture              *captureConn
	deepgram             net.Conn  // Deepgram's socket, where the test delivers records
	upstream             *tls.Conn // the relay's TLS end
	out                  net.Conn  // the browser's socket
	client, upstreamPeer *Peer
	s                    *session
}

func newTLSRig(tb testing.TB, cert tls.Certificate) *tlsRig {
	r := &tlsRig{}
	var clientSide, upTCP net.Conn
	r.out, clientSide = loopbackPair(tb)
	upTCP, r.deepgram = loopbackPair(tb)
	r.capture = &captureConn{Conn: r.deepgram}
	r.server = tls.Server(r.capture, &tls.Config{Certificates: []tls.Certificate{cert}})
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	r.upstream = tls.Client(NewTLSSocket(upTCP), &tls.Config{RootCAs: roots, ServerName: "deepgram.test"})
	handshook := make(chan error, 1)
	go func() { handshook <- r.server.Handshake() }()
	if err := r.upstream.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-handshook; err != nil {
		tb.Fatal(err)
	}
	r.capture.mu.Lock()
	r.capture.capture = true
	r.capture.mu.Unlock()
	r.client, r.upstreamPeer = NewPeer(clientSide, nil, Client), NewPeer(r.upstream, nil, Upstream)
	if r.upstreamPeer.sock.tls == nil {
		tb.Fatal("the TLS upstream is not read through its socket")
	}
	tb.Cleanup(func() {
		r.out.Close()
		r.deepgram.Close()
		if r.s != nil {
			<-r.s.done
		} else {
			clientSide.Close()
			upTCP.Close()
		}
	})
	return r
}

// records is the TLS records Deepgram's end makes of frame.
func (r *tlsRig) records(t *testing.T, frame []byte) []byte {
	if _, err := r.server.Write(frame); err != nil {
		t.Fatal(err)
	}
	return r.capture.take()
}

// deliver writes records to the relay's socket.
func (r *tlsRig) deliver(t *testing.T, records ...[]byte) {
	if _, err := r.deepgram.Write(bytes.Join(records, nil)); err != nil {
		t.Fatal(err)
	}
}

// readBefore reads frame through the relay's TLS end before the session
// starts, as the handshake's 101 is read.
func (r *tlsRig) readBefore(t *testing.T, frame []byte) {
	got := make([]byte, len(frame))
	if _, err := io.ReadFull(r.upstream, got); err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("read before the session %q %v", got, err)
	}
}

func (r *tlsRig) start() {
	r.s = startSession(r.client, r.upstreamPeer, Options{MaxMessage: 1 << 20})
}

// expect reads want from the client's socket.
func (r *tlsRig) expect(t *testing.T, want []byte) {
	_ = r.out.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(r.out, got); err != nil {
		t.Fatalf("the client got %d of %d bytes: %v", n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the client got the frames changed")
	}
}

// TestTLSRecordsSplitAnywhere: Deepgram's TLS records reach the relay cut at
// any byte, several to a read and a frame over many records, after a read
// made before the session began (as the 101 is read) that ended inside a
// record; every frame reaches the client whole and in order.
func TestTLSRecordsSplitAnywhere(t *testing.T) {
	cert := selfSigned(t)
	for seed := range 6 {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(seed)))
			r := newTLSRig(t, cert)
			first := AppendFrame(nil, OpText, []byte(`{"type":"Welcome"}`), false)
			firstRecord := r.records(t, first)
			var want, rest []byte
			for range 12 {
				size := []int{0, 1, 125, 126, 1920, 16379, 16384, 40000}[rng.Intn(8)]
				op := []byte{OpBinary, OpText}[rng.Intn(2)]
				frame := AppendFrame(nil, op, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, size), false)
				want = append(want, frame...)
				rest = append(rest, r.records(t, frame)...)
			}
			r.deliver(t, firstRecord, rest[:3])
			rest = rest[3:]
			r.readBefore(t, first)
			r.start()
			delivered := make(chan error, 1)
			go func() {
				for len(rest) > 0 {
					k := min(len(rest), 1+rng.Intn(4000))
					if _, err := r.deepgram.Write(rest[:k]); err != nil {
						delivered <- err
						return
					}
					rest = rest[k:]
					if rng.Intn(3) == 0 {
						time.Sleep(time.Duration(rng.Intn(300)) * time.Microsecond)
					}
				}
				delivered <- nil
			}()
			r.expect(t, want)
			if err := <-delivered; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTLSRecordsLeftFromBefore: a record left whole in crypto/tls by the read
// before the session, then two records in the session's first read: all
// three reach the client, though nothing follows them.
func TestTLSRecordsLeftFromBefore(t *testing.T) {
	r := newTLSRig(t, selfSigned(t))
	first := AppendFrame(nil, OpText, []byte(`{"type":"Welcome"}`), false)
	a, b, c := AppendFrame(nil, OpBinary, []byte("A"), false), AppendFrame(nil, OpBinary, []byte("BB"), false), AppendFrame(nil, OpBinary, []byte("CCC"), false)
	recFirst, recA, recB, recC := r.records(t, first), r.records(t, a), r.records(t, b), r.records(t, c)
	r.deliver(t, recFirst, recA, recB[:3])
	r.readBefore(t, first) // A stays whole in crypto/tls, B begun
	r.deliver(t, recB[3:], recC)
	time.Sleep(20 * time.Millisecond) // both in the socket before the session's first read
	r.start()
	r.expect(t, bytes.Join([][]byte{a, b, c}, nil))
}

// TestTLSFINAfterLastRecord: Deepgram's last record and its FIN (no
// close_notify) arrive together, in one segment while the pipe waits or
// before the pipe has started, so that the FIN adds no edge of its own to
// the poller; the pipe sees the end at once (the hangup watch wakes it).
func TestTLSFINAfterLastRecord(t *testing.T) {
	for _, before := range []bool{false, true} {
		for range 20 {
			r := newTLSRig(t, selfSigned(t))
			last := AppendFrame(nil, OpText, []byte(`{"type":"Last"}`), false)
			rec := r.records(t, last)
			end := func() {
				cork(t, r.deepgram)
				r.deliver(t, rec)
				r.deepgram.Close()
			}
			if before {
				end()
				time.Sleep(time.Millisecond)
			}
			r.start()
			if !before {
				time.Sleep(time.Millisecond)
				end()
			}
			r.expect(t, last)
			r.expect(t, AppendFrame(nil, OpClose, ClosePayload(1000, "upstream ended"), false))
			if e := r.s.owner.result(); e.Cause != Vanished || e.Src != Upstream {
				t.Fatalf("before %v: ended %+v", before, e)
			}
		}
	}
}

// TestTLSSocketWriteWaitsWhileFull: one write many times the two sockets'
// buffers arrives whole and in order: the socket's raw sends wait on the
// poller whenever it is full.
func TestTLSSocketWriteWaitsWhileFull(t *testing.T) {
	a, b := loopbackPair(t)
	defer a.Close()
	defer b.Close()
	s := NewTLSSocket(a)
	if _, ok := s.(*tlsSocket); !ok {
		t.Fatal("a TCP socket is not written raw")
	}
	msg := make([]byte, 32<<20)
	rand.New(rand.NewSource(1)).Read(msg)
	wrote := make(chan error, 1)
	go func() {
		n, err := s.Write(msg)
		if err == nil && n != len(msg) {
			err = fmt.Errorf("wrote %d of %d bytes", n, len(msg))
		}
		wrote <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("the bytes arrived changed")
	}
}

// TestTLSSocketWriteDeadline: a write to a peer that never reads ends at the
// write deadline with a timeout, as net.Conn's does: the session's stuck-write
// check and its close rely on it.
func TestTLSSocketWriteDeadline(t *testing.T) {
	a, b := loopbackPair(t)
	defer a.Close()
	defer b.Close()
	s := NewTLSSocket(a)
	if err := s.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := s.Write(make([]byte, 64<<20))
	if !isTimeout(err) || n >= 64<<20 {
		t.Fatalf("wrote %d bytes, err %v; want a timeout", n, err)
	}
}

// TestTLSSocketWriteClosed: a write on a socket closed under it fails as
// net.Conn's does, with net.ErrClosed.
func TestTLSSocketWriteClosed(t *testing.T) {
	a, b := loopbackPair(t)
	defer b.Close()
	s := NewTLSSocket(a)
	a.Close()
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("err %v; want net.ErrClosed", err)
	}
}
