// Package fakedeepgram is a stand-in for Deepgram's agent and listen
// WebSocket endpoints, over real sockets, for dgrelay's tests and benchmarks.
//
// By default it is strict: it follows the protocol Deepgram publishes (its
// AsyncAPI spec, deepgram/deepgram-api-specs asyncapi.yml, and the docs pages
// named beside each rule) and answers a client that breaks it as Deepgram
// does. The agent (/v1/agent/converse, agent.go and turn.go) sends Welcome,
// takes one Settings before anything else, acknowledges updates, plays a
// conversation turn for InjectUserMessage, and ends idle or over-long
// sessions. Listen (/v1/listen and Flux's /v2/listen, listen.go) transcribes
// nothing but answers in the published shapes. Handshakes are checked as
// Deepgram checks them (auth.go). One REST call is answered too: GET
// /v1/projects (rest.go), which the relay makes at start to check its key.
//
// Test controls, which Deepgram does not have: a session obeys Fake.*
// commands sent as text messages at any time (see Command, controls.go);
// Options make every handshake misbehave; Tell speaks into every live
// session. Options.Lenient turns the protocol off (every message echoed) for
// tests and benchmarks about raw framing; Options.EchoAudio echoes the
// agent's audio for tests that check relayed bytes. In voice mode
// (VoiceQuery, Options.Voice) the agent speaks continuously, for load and for
// the try page.
package fakedeepgram

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Options shape every handshake. Set them before clients connect, or with
// SetOptions between sessions. The zero value is a strict Deepgram that
// accepts any credentials.
type Options struct {
	// APIKey, when set, is required as "Authorization: Token <APIKey>" or
	// as the subprotocols ["token", APIKey]; anything else is answered 401
	// with a dg-error header, as Deepgram does. With neither APIKey nor
	// AccessToken set, any credentials (or none) are accepted.
	APIKey string
	// AccessToken, when set, is accepted as "Authorization: Bearer <token>"
	// or as the subprotocols ["bearer", token]: a temporary token from
	// Deepgram's /v1/auth/grant. With only APIKey set, bearer is refused.
	AccessToken string
	// RejectStatus, when set, answers every handshake with this status
	// (the first RejectFirst only, when that is set).
	RejectStatus int
	// RejectFirst limits RejectStatus to the first RejectFirst handshakes.
	RejectFirst int
	// DropFirst cuts the connection of the first DropFirst handshakes
	// without an answer, as a restarting backend does.
	DropFirst int
	// HandshakeDelay holds every handshake this long before answering.
	HandshakeDelay time.Duration
	// ReadLimit is the largest message accepted; 0 means 64 MiB.
	ReadLimit int64
	// NoWelcome skips the agent's Welcome message.
	NoWelcome bool
	// TLS serves wss:// with a self-signed certificate (see Certificate),
	// as Deepgram serves wss://.
	TLS bool
	// Voice puts every agent session in voice mode, as VoiceQuery does one,
	// for a client whose URL the test does not write (the try page).
	Voice bool

	// Lenient turns Deepgram's protocol off: on any path, Welcome (unless
	// NoWelcome), SettingsApplied for every Settings, KeepAlive swallowed,
	// every other text and binary message echoed, no order rules and no
	// timers. For tests of raw framing and for the benchmark.
	Lenient bool
	// EchoAudio (strict mode) sends every binary message back whole, as if
	// it were the agent's TTS audio (on /v1/listen, instead of Results):
	// a stand-in for tests that check relayed bytes. The agent's rule that
	// audio waits for SettingsApplied still holds.
	EchoAudio bool
	// ClientTimeout is how long a session waits for a client message
	// before it ends: the agent sends Error CLIENT_MESSAGE_TIMEOUT and
	// closes, listen closes 1011 NET-0001. Every client message counts
	// (audio, KeepAlive, any other text, Fake.* commands). 0 means 10 s;
	// negative means never.
	ClientTimeout time.Duration
	// MaxSession is the agent's session length: Error
	// MAXIMUM_SESSION_LENGTH_REACHED and a close then. 0 means 2 h;
	// negative means no limit.
	MaxSession time.Duration
	// SessionWarning is how long before MaxSession the agent sends Warning
	// MAXIMUM_SESSION_LENGTH_APPROACHING. 0 means 5 min; negative means
	// no warning.
	SessionWarning time.Duration
}

// Defaults of the timing Options, from Deepgram's docs.
const (
	// DefaultClientTimeout: docs keep-alive and audio-keep-alive: a
	// connection with neither audio nor KeepAlive for 10 s is closed
	// (NET-0001); KeepAlive every 3-5 s (listen) or 8 s (agent) is the
	// advice.
	DefaultClientTimeout = 10 * time.Second
	// DefaultMaxSession: docs voice-agent-errors-warnings, a Voice Agent
	// session ends at 2 hours.
	DefaultMaxSession = 2 * time.Hour
	// DefaultSessionWarning: the MAXIMUM_SESSION_LENGTH_APPROACHING warning
	// comes 5 minutes before the end.
	DefaultSessionWarning = 5 * time.Minute
)

// Handshake is what the fake saw of one upgrade request.
type Handshake struct {
	// Host, Path, RawQuery and Header are the request's.
	Host     string
	Path     string
	RawQuery string
	Header   http.Header
	// Resumed: the client resumed an earlier TLS session (TLS only).
	Resumed bool
}

// Closed is how one upstream session ended, as the fake saw it.
type Closed struct {
	// Code is the close code of the session's end: the relay's, or the
	// fake's own when the fake closed (a Fake.Close, an Error), or -1 if
	// the connection dropped without a close frame.
	Code websocket.StatusCode
	// Reason is the close frame's reason, or why the connection dropped.
	Reason string
}

// Server is a running fake upstream.
type Server struct {
	// URL is the ws:// base URL, e.g. ws://127.0.0.1:41234.
	URL string

	http *httptest.Server

	mu         sync.Mutex
	opts       Options
	handshakes []Handshake
	rest       []Handshake
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

// endpoint is which of Deepgram's WebSocket APIs a path names.
type endpoint int

const (
	unknownPath endpoint = iota
	agentPath
	listenV1Path
	listenV2Path
)

// endpointOf maps a path to its API (Deepgram's AsyncAPI spec, channels).
func endpointOf(path string) endpoint {
	switch strings.TrimSuffix(path, "/") {
	case "/v1/agent/converse":
		return agentPath
	case "/v1/listen":
		return listenV1Path
	case "/v2/listen":
		return listenV2Path
	}
	return unknownPath
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	// Counted from the start, before any hijack: httptest's Close stops
	// waiting for a handler once it hijacks, so an Add after that could
	// race Close's Wait.
	s.sessions.Add(1)
	defer s.sessions.Done()
	if isREST(r) {
		s.projects(w, r)
		return
	}
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
	subprotocol, ok := authorize(r, opts)
	if !ok {
		w.Header().Set("dg-error", "Invalid credentials.")
		http.Error(w, `{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}`, http.StatusUnauthorized)
		return
	}
	if opts.RejectStatus != 0 && (opts.RejectFirst == 0 || n <= opts.RejectFirst) {
		w.Header().Set("dg-error", "Rejected by the fake upstream.")
		http.Error(w, "rejected", opts.RejectStatus)
		return
	}
	ep := endpointOf(r.URL.Path)
	if ep == unknownPath && !opts.Lenient {
		w.Header().Set("dg-error", "Not found.")
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	hw := &hijackRecorder{ResponseWriter: w}
	accept := &websocket.AcceptOptions{InsecureSkipVerify: true}
	if subprotocol != "" {
		accept.Subprotocols = []string{subprotocol}
	}
	c, err := websocket.Accept(hw, r, accept)
	if err != nil {
		return
	}
	limit := opts.ReadLimit
	if limit == 0 {
		limit = 64 << 20
	}
	c.SetReadLimit(limit)
	s.mu.Lock()
	s.live[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.live, c)
		s.mu.Unlock()
	}()
	ss := &session{s: s, c: c, raw: hw.conn, id: id, opts: opts,
		voice: opts.Voice || strings.Contains(r.URL.RawQuery, VoiceQuery)}
	var end Closed
	switch {
	case opts.Lenient:
		end = ss.lenient()
	case ep == agentPath:
		end = ss.agent()
	case ep == listenV1Path:
		end = ss.listenV1()
	default:
		end = ss.listenV2()
	}
	select {
	case s.closed <- end:
	default: // nobody is watching: a benchmark, not a test
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
