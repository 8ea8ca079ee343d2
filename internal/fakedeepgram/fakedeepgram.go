// Package fakedeepgram is a stand-in for Deepgram's agent and listen
// WebSocket endpoints, over real sockets, for dgrelay's tests and benchmarks.
//
// It speaks the agent protocol's shape: Welcome on connect, SettingsApplied
// after Settings, KeepAlive swallowed, and every other message echoed back
// with its type and bytes. A test makes one session misbehave by sending it a
// command as a text message (see Command); Options make every handshake
// misbehave. In voice mode (VoiceQuery, Options.Voice) it plays Deepgram's
// side of a conversation instead of echoing audio, and Tell speaks into every
// live session, for a client (a browser page) that sends no commands.
package fakedeepgram

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// Options shape every handshake. Set them before clients connect, or with
// SetOptions between sessions.
type Options struct {
	// APIKey, when set, is required as "Authorization: Token <APIKey>";
	// anything else is answered 401 with a dg-error header, as Deepgram does.
	APIKey string
	// RejectStatus, when set, answers every handshake with this status
	// (the first RejectFirst only, when that is set).
	RejectStatus int
	RejectFirst  int
	// DropFirst cuts the connection of the first DropFirst handshakes
	// without an answer, as a restarting backend does.
	DropFirst int
	// HandshakeDelay holds every handshake this long before answering.
	HandshakeDelay time.Duration
	// ReadLimit is the largest message accepted; 0 means 64 MiB.
	ReadLimit int64
	// NoWelcome skips the Welcome message (benchmarks that want pure echo).
	NoWelcome bool
	// TLS serves wss:// with a self-signed certificate (see Certificate),
	// as Deepgram serves wss://.
	TLS bool
	// Voice puts every session in voice mode, as VoiceQuery does one, for
	// a client whose URL the test does not write (the try page), and
	// records the audio those sessions hear (see Heard).
	Voice bool
}

// Handshake is what the fake saw of one upgrade request.
type Handshake struct {
	Host     string
	Path     string
	RawQuery string
	Header   http.Header
	// Resumed: the client resumed an earlier TLS session (TLS only).
	Resumed bool
}

// Closed is how one upstream session ended, as the fake saw it.
type Closed struct {
	// Code is the close code the relay sent, or -1 if the connection
	// dropped without a close frame.
	Code   websocket.StatusCode
	Reason string
}

// Command is a text message that makes the fake act on its session:
//
//	{"type":"Fake.Close","code":4000,"reason":"bye"}  close with code and reason
//	{"type":"Fake.Vanish"}                             drop TCP, no close frame
//	{"type":"Fake.Deaf"}                               stop reading for 3 s, then drop TCP
//	{"type":"Fake.Send","bytes":N,"binary":true}       send one message of N bytes
//	{"type":"Fake.Stream","bytes":N,"interval_ms":M,"count":C}  send C binary messages of N bytes every M ms
//	{"type":"Fake.Raw","hex":"8a00"}                   write these bytes to the socket, framed or not
//	{"type":"Fake.Raw","hex":"8a00","vanish":true}     the same, then drop TCP, the FIN in the bytes' segment
type Command struct {
	Type       string `json:"type"`
	Code       int    `json:"code"`
	Reason     string `json:"reason"`
	Bytes      int    `json:"bytes"`
	Binary     bool   `json:"binary"`
	IntervalMS int    `json:"interval_ms"`
	Count      int    `json:"count"`
	Hex        string `json:"hex"`
	Vanish     bool   `json:"vanish"`
}

// deafFor is how long Fake.Deaf stops reading.
const deafFor = 3 * time.Second

// Server is a running fake upstream.
type Server struct {
	// URL is the ws:// base URL, e.g. ws://127.0.0.1:41234.
	URL string

	http *httptest.Server

	mu         sync.Mutex
	opts       Options
	handshakes []Handshake
	texts      [][]byte
	heard      Heard
	// live is every session's connection while it runs, for Tell.
	live     map[*websocket.Conn]struct{}
	closed   chan Closed
	sessions sync.WaitGroup
}

// Start serves a fake upstream on 127.0.0.1 until Close.
func Start(opts Options) *Server {
	s := &Server{opts: opts, closed: make(chan Closed, 1024), live: map[*websocket.Conn]struct{}{}}
	if opts.TLS {
		s.http = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	} else {
		s.http = httptest.NewServer(http.HandlerFunc(s.serve))
	}
	s.URL = "ws" + s.http.URL[len("http"):]
	return s
}

// Certificate is the server's certificate when it serves TLS, for a client's
// root pool.
func (s *Server) Certificate() *x509.Certificate { return s.http.Certificate() }

// SetOptions replaces the options for handshakes from now on.
func (s *Server) SetOptions(opts Options) {
	s.mu.Lock()
	s.opts = opts
	s.mu.Unlock()
}

// Handshakes returns every handshake seen so far, oldest first.
func (s *Server) Handshakes() []Handshake {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Handshake(nil), s.handshakes...)
}

// Texts returns every text message received so far, oldest first.
func (s *Server) Texts() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.texts...)
}

// Closed delivers one value per session as it ends (the last 1024 unread).
func (s *Server) Closed() <-chan Closed { return s.closed }

// Close stops the server and waits for its sessions to end.
func (s *Server) Close() {
	s.http.CloseClientConnections()
	s.http.Close()
	s.sessions.Wait()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	// Counted from the start, before any hijack: httptest's Close stops
	// waiting for a handler once it hijacks, so an Add after that could
	// race Close's Wait.
	s.sessions.Add(1)
	defer s.sessions.Done()
	s.mu.Lock()
	opts := s.opts
	s.handshakes = append(s.handshakes, Handshake{Host: r.Host, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(),
		Resumed: r.TLS != nil && r.TLS.DidResume})
	n := len(s.handshakes)
	s.mu.Unlock()

	if n <= opts.DropFirst {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
		return
	}

	if opts.HandshakeDelay > 0 {
		select {
		case <-time.After(opts.HandshakeDelay):
		case <-r.Context().Done():
			return
		}
	}
	id := requestID()
	w.Header().Set("dg-request-id", id)
	if opts.APIKey != "" && r.Header.Get("Authorization") != "Token "+opts.APIKey {
		w.Header().Set("dg-error", "Invalid credentials.")
		http.Error(w, `{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}`, http.StatusUnauthorized)
		return
	}
	if opts.RejectStatus != 0 && (opts.RejectFirst == 0 || n <= opts.RejectFirst) {
		w.Header().Set("dg-error", "Rejected by the fake upstream.")
		http.Error(w, "rejected", opts.RejectStatus)
		return
	}
	hw := &hijackRecorder{ResponseWriter: w}
	c, err := websocket.Accept(hw, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	limit := opts.ReadLimit
	if limit == 0 {
		limit = 64 << 20
	}
	c.SetReadLimit(limit)
	voice := opts.Voice || strings.Contains(r.URL.RawQuery, VoiceQuery)
	s.mu.Lock()
	s.live[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.live, c)
		s.mu.Unlock()
	}()
	select {
	case s.closed <- s.session(c, hw.conn, id, opts, voice):
	default: // nobody is watching: a benchmark, not a test
	}
}

// session runs one upstream connection and returns how it ended.
func (s *Server) session(c *websocket.Conn, raw net.Conn, id string, opts Options, voice bool) Closed {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var streams sync.WaitGroup
	defer streams.Wait()
	defer c.CloseNow()

	if !opts.NoWelcome {
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"Welcome","request_id":"`+id+`"}`)); err != nil {
			return closedBy(err)
		}
	}
	if voice {
		streams.Add(1)
		go func() {
			defer streams.Done()
			speak(ctx, c)
		}()
	}
	discard := make([]byte, 4096)
	for {
		if voice {
			// Heard, not echoed, and read without allocating or arming a
			// timer (coder/websocket arms one per read under a context
			// that can end): under a benchmark's load this fake shares a
			// core with the clients. Closing the connection ends the read.
			typ, r, err := c.Reader(context.Background())
			if err != nil {
				return closedBy(err)
			}
			if typ == websocket.MessageBinary {
				if !opts.Voice {
					if _, err := io.CopyBuffer(io.Discard, r, discard); err != nil {
						return closedBy(err)
					}
					continue
				}
				if _, err := io.CopyBuffer(&listener{s: s}, r, discard); err != nil {
					return closedBy(err)
				}
				s.mu.Lock()
				s.heard.Messages++
				s.mu.Unlock()
				continue
			}
			data, err := io.ReadAll(r)
			if err != nil {
				return closedBy(err)
			}
			if opts.Voice {
				s.record(data)
			}
			switch {
			case isType(data, "KeepAlive"):
				continue
			case isType(data, "Settings"):
				data = []byte(`{"type":"SettingsApplied"}`)
			}
			if err := c.Write(context.Background(), typ, data); err != nil {
				return closedBy(err)
			}
			continue
		}
		typ, data, err := c.Read(ctx)
		if err != nil {
			return closedBy(err)
		}
		if typ == websocket.MessageBinary {
			if err := c.Write(context.Background(), typ, data); err != nil {
				return closedBy(err)
			}
			continue
		}
		s.record(data)
		var reply []byte
		switch {
		case bytes.Contains(data, []byte(`"Fake.`)):
			var cmd Command
			if json.Unmarshal(data, &cmd) != nil {
				continue
			}
			switch cmd.Type {
			case "Fake.Close":
				_ = c.Close(websocket.StatusCode(cmd.Code), cmd.Reason)
				return Closed{Code: websocket.StatusCode(cmd.Code), Reason: cmd.Reason}
			case "Fake.Vanish":
				return Closed{Code: -1}
			case "Fake.Deaf":
				// A backend that stopped reading: the relay's writes
				// back up, and it gives up on them. Bounded, since
				// what the relay sent before it hung up is still
				// unread.
				time.Sleep(deafFor)
				return Closed{Code: -1}
			case "Fake.Send":
				mt := websocket.MessageText
				if cmd.Binary {
					mt = websocket.MessageBinary
				}
				if err := c.Write(ctx, mt, bytes.Repeat([]byte{'a'}, cmd.Bytes)); err != nil {
					return closedBy(err)
				}
			case "Fake.Raw":
				// What a broken upstream would send; the library's own
				// writes are idle while this runs.
				b, err := hex.DecodeString(cmd.Hex)
				if err == nil && cmd.Vanish {
					return vanishAfter(raw, b)
				}
				if err == nil {
					_, err = raw.Write(b)
				}
				if err != nil {
					return closedBy(err)
				}
			case "Fake.Stream":
				streams.Add(1)
				go func() {
					defer streams.Done()
					stream(ctx, c, cmd)
				}()
			}
			continue
		case isType(data, "Settings"):
			reply = []byte(`{"type":"SettingsApplied"}`)
		case isType(data, "KeepAlive"):
			continue
		default:
			reply = data
		}
		if err := c.Write(ctx, websocket.MessageText, reply); err != nil {
			return closedBy(err)
		}
	}
}

// record keeps a text message for Texts.
func (s *Server) record(data []byte) {
	s.mu.Lock()
	if len(s.texts) < 10000 {
		s.texts = append(s.texts, data)
	}
	s.mu.Unlock()
}

// stream sends cmd.Count binary messages of cmd.Bytes, one every
// cmd.IntervalMS, as Deepgram sends TTS audio.
func stream(ctx context.Context, c *websocket.Conn, cmd Command) {
	frame := make([]byte, cmd.Bytes)
	interval := time.Duration(cmd.IntervalMS) * time.Millisecond
	for i := 0; i < cmd.Count; i++ {
		if err := c.Write(ctx, websocket.MessageBinary, frame); err != nil {
			return
		}
		if interval > 0 {
			select {
			case <-time.After(interval):
			case <-ctx.Done():
				return
			}
		}
	}
}

func isType(data []byte, typ string) bool {
	var m struct {
		Type string `json:"type"`
	}
	return bytes.Contains(data, []byte(typ)) && json.Unmarshal(data, &m) == nil && m.Type == typ
}

func closedBy(err error) Closed {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return Closed{Code: ce.Code, Reason: ce.Reason}
	}
	if errors.Is(err, net.ErrClosed) {
		return Closed{Code: -1}
	}
	return Closed{Code: -1, Reason: err.Error()}
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// hijackRecorder keeps the connection Accept hijacks, for Fake.Raw.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = conn
	return conn, brw, err
}

// vanishAfter writes b and drops the TCP connection under raw with no close
// frame and, over TLS, no close_notify. The socket is corked first, so the
// bytes and the FIN leave in one segment: the peer's poller sees one edge for
// both, the case a reader that stops at a short read misses.
func vanishAfter(raw net.Conn, b []byte) Closed {
	tcp := raw
	if tc, ok := raw.(*tls.Conn); ok {
		tcp = tc.NetConn()
	}
	if sc, ok := tcp.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = cork(fd) })
		}
	}
	_, _ = raw.Write(b)
	_ = tcp.Close()
	return Closed{Code: -1}
}
