package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// TestUpstreamThroughProxy: with HTTPS_PROXY set, the upstream is reached
// through the proxy's CONNECT tunnel, with its credentials, and the session
// relays as usual.
func TestUpstreamThroughProxy(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	proxy := startConnectProxy(t)
	tr := newUpgradeTransport()
	proxyURL := &url.URL{Scheme: "http", Host: proxy.addr, User: url.UserPassword("relay", "s3cret")}
	tr.proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	slot := new(handoffSlot)
	ctx := t.Context()
	c, _, err := websocket.Dial(withHandoffSlot(ctx, slot), fake.URL+"/v1/agent/converse", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, msg, err := c.Read(ctx); err != nil || !strings.Contains(string(msg), "Welcome") {
		t.Fatalf("through the proxy: %q %v", msg, err)
	}
	if slot.conn == nil {
		t.Fatal("the upgraded connection was not handed over")
	}
	target, auth := proxy.seen()
	if target != strings.TrimPrefix(fake.URL, "ws://") || auth != "Basic cmVsYXk6czNjcmV0" {
		t.Fatalf("proxy saw CONNECT %q with %q", target, auth)
	}

	// A malformed HTTPS_PROXY is reported without its value, which holds
	// the proxy's password.
	tr.proxy = func(*http.Request) (*url.URL, error) {
		// What http.ProxyFromEnvironment says of a value it cannot parse.
		return nil, fmt.Errorf("invalid proxy address %q: %w", "http://relay:s3cret@proxy:bad port", errors.New("invalid port"))
	}
	_, _, err = websocket.Dial(ctx, fake.URL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("malformed proxy: %v", err)
	}
	tr.proxy = func(*http.Request) (*url.URL, error) { return &url.URL{Scheme: "socks5", Host: proxy.addr}, nil }
	if _, _, err = websocket.Dial(ctx, fake.URL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}); err == nil || !strings.Contains(err.Error(), "socks5") {
		t.Fatalf("socks5 proxy: %v", err)
	}
}

// connectProxy is an HTTP proxy that speaks only CONNECT.
type connectProxy struct {
	addr         string
	mu           sync.Mutex
	target, auth string
}

func (p *connectProxy) seen() (string, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target, p.auth
}

func startConnectProxy(t *testing.T) *connectProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				p.mu.Lock()
				p.target, p.auth = req.Host, req.Header.Get("Proxy-Authorization")
				p.mu.Unlock()
				up, err := net.Dial("tcp", req.Host)
				if err != nil {
					_, _ = io.WriteString(conn, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				_, _ = io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
				done := make(chan struct{})
				go func() { _, _ = io.Copy(up, conn); up.Close(); close(done) }()
				_, _ = io.Copy(conn, up)
				conn.Close()
				<-done
			}()
		}
	}()
	return p
}

// TestUpstreamHandshake checks what Deepgram sees: the key as a Token
// header, the route by service, and exactly the forwarded query.
func TestUpstreamHandshake(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{APIKey: testAPIKey})
	cases := []struct {
		query, path, forwarded string
	}{
		{"", "/v1/agent/converse", ""},
		{"service=agent&token=eyJ.abc.def", "/v1/agent/converse", ""},
		{"token=t&service=transcription&model=nova-3&encoding=linear16&sample_rate=16000&interim_results=true&keywords=a%20b&keywords=c",
			"/v1/listen", "model=nova-3&encoding=linear16&sample_rate=16000&interim_results=true&keywords=a%20b&keywords=c"},
		{"Token=x&tag=x+y&service=agent", "/v1/agent/converse", "tag=x+y"},
	}
	for _, tc := range cases {
		c := h.dial(tc.query)
		if tc.path == "/v1/agent/converse" { // listen sends nothing first
			expectType(t, c, "Welcome")
		}
		c.Close(websocket.StatusNormalClosure, "")
		h.upstreamClosed()
		hs := h.fake.Handshakes()
		got := hs[len(hs)-1]
		if got.Header.Get("Authorization") != "Token "+testAPIKey {
			t.Errorf("%q: Authorization header is not the key", tc.query)
		}
		if got.Path != tc.path || got.RawQuery != tc.forwarded {
			t.Errorf("%q: upstream got %s?%s, want %s?%s", tc.query, got.Path, got.RawQuery, tc.path, tc.forwarded)
		}
		if strings.Contains(strings.ToLower(got.RawQuery), "token") || strings.Contains(got.RawQuery, "service") {
			t.Errorf("%q: token or service forwarded: %s", tc.query, got.RawQuery)
		}
	}
}

func TestUpstreamHostHasNoDefaultPort(t *testing.T) {
	for raw, want := range map[string]string{
		"wss://agent.deepgram.com:443/v1/agent/converse": "agent.deepgram.com",
		"wss://agent.deepgram.com/v1/agent/converse":     "agent.deepgram.com",
		"ws://127.0.0.1:80/x":                            "127.0.0.1",
		"ws://127.0.0.1:8081/x":                          "127.0.0.1:8081",
		"wss://api.eu.deepgram.com:8443/v1/listen":       "api.eu.deepgram.com:8443",
	} {
		up, err := newUpstream(raw)
		if err != nil || up.host != want {
			t.Errorf("%s: host %q (%v), want %q", raw, up.host, err, want)
		}
	}
	up, _ := newUpstream("wss://agent.deepgram.com/v1/agent/converse?mip_opt_out=true")
	if got := up.target("model=x"); got != "wss://agent.deepgram.com/v1/agent/converse?mip_opt_out=true&model=x" {
		t.Errorf("target keeps the upstream's own query first: %s", got)
	}
}

// TestUpstreamFailures: Deepgram's refusal or absence reaches the browser as
// an in-band Error frame, then close 1014, and never holds the key.
func TestUpstreamFailures(t *testing.T) {
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}()
	cases := []struct {
		name string
		env  map[string]string
		opts fakedeepgram.Options
		code string
	}{
		{"wrong key", nil, fakedeepgram.Options{APIKey: "another-key"}, "UPSTREAM_AUTH"},
		{"refused", map[string]string{"DEEPGRAM_AGENT_URL": "ws://" + closedPort + "/v1/agent/converse"}, fakedeepgram.Options{}, "UPSTREAM_UNAVAILABLE"},
		{"timed out", nil, fakedeepgram.Options{HandshakeDelay: 5 * time.Second}, "UPSTREAM_UNAVAILABLE"},
		{"bad request", nil, fakedeepgram.Options{RejectStatus: 400}, "UPSTREAM_REJECTED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.env, tc.opts)
			h.relay.dialTimeout = 300 * time.Millisecond
			// A raw " in the query (a client's own, unencoded) comes
			// escaped in the dial error's quoted URL: what follows it
			// is the query too.
			c := h.dial(`service=agent&token=abc&keyterms=private-words&tag=a"private-tag`)
			typ, data := read(t, c)
			if typ != websocket.MessageText || !bytes.Contains(data, []byte(`"type":"Error"`)) ||
				!bytes.Contains(data, []byte(`"code":"`+tc.code+`"`)) || !bytes.Contains(data, []byte(`"description":"`)) {
				t.Fatalf("want an Error frame with %s, got %s", tc.code, data)
			}
			if bytes.Contains(data, []byte(testAPIKey)) || bytes.Contains(data, []byte("another-key")) {
				t.Fatalf("the Error frame holds a key: %s", data)
			}
			ce := expectClose(t, c, websocket.StatusBadGateway)
			if strings.Contains(ce.Reason, testAPIKey) {
				t.Fatal("the close reason holds the key")
			}
			h.relay.drain(time.Second) // waits for the handler to log
			if !strings.Contains(h.logs.String(), `"code":"`+tc.code+`"`) {
				t.Errorf("the failure is not logged with its code:\n%s", h.logs.String())
			}
			if strings.Contains(h.logs.String(), "private-words") || strings.Contains(h.logs.String(), "private-tag") {
				t.Errorf("the dial error logged the query string:\n%s", h.logs.String())
			}
		})
	}
}

// TestUpstreamDialRetry: a dial that Deepgram's front cut or answered 502,
// 503 or 504 is tried again and the session opens; a refused key or request
// is not tried again; UPSTREAM_RETRIES bounds the tries.
func TestUpstreamDialRetry(t *testing.T) {
	cases := []struct {
		name       string
		retries    string
		opts       fakedeepgram.Options
		handshakes int
		code       string // the Error frame's, or "" when the session opens
		metric     string // the retry counter's line, when there is one
	}{
		{"503 then open", "1", fakedeepgram.Options{RejectStatus: 503, RejectFirst: 1}, 2, "", `cause="http_503",service="agent"} 1`},
		{"502 twice then open", "2", fakedeepgram.Options{RejectStatus: 502, RejectFirst: 2}, 3, "", `cause="http_502",service="agent"} 2`},
		{"cut then open", "1", fakedeepgram.Options{DropFirst: 1}, 2, "", `cause="connect",service="agent"} 1`},
		{"504 past the retries", "1", fakedeepgram.Options{RejectStatus: 504}, 2, "UPSTREAM_REJECTED", `cause="http_504",service="agent"} 1`},
		{"retries off", "0", fakedeepgram.Options{RejectStatus: 503, RejectFirst: 1}, 1, "UPSTREAM_REJECTED", ""},
		{"a refused key is not retried", "3", fakedeepgram.Options{APIKey: "another-key"}, 1, "UPSTREAM_AUTH", ""},
		{"a bad request is not retried", "3", fakedeepgram.Options{RejectStatus: 400}, 1, "UPSTREAM_REJECTED", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, map[string]string{"UPSTREAM_RETRIES": tc.retries}, tc.opts)
			c := h.dial("service=agent")
			if tc.code == "" {
				expectType(t, c, "Welcome")
				c.Close(websocket.StatusNormalClosure, "")
			} else {
				if e := expectType(t, c, "Error"); e["code"] != tc.code {
					t.Fatalf("Error frame %v, want %s", e, tc.code)
				}
				expectClose(t, c, websocket.StatusBadGateway)
			}
			h.relay.drain(time.Second)
			if got := len(h.fake.Handshakes()); got != tc.handshakes {
				t.Errorf("%d handshakes at Deepgram, want %d", got, tc.handshakes)
			}
			m := httptest.NewServer(h.relay.metricsServer().Handler)
			defer m.Close()
			body := scrape(t, m.URL+"/metrics")
			if tc.metric != "" && !strings.Contains(body, "dgrelay_upstream_dial_retries_total{"+tc.metric) {
				t.Errorf("no retry counted as %s:\n%s", tc.metric, grepLines(body, "dial_retries"))
			}
			if tc.metric == "" && strings.Contains(body, "dgrelay_upstream_dial_retries_total{") {
				t.Errorf("a retry was counted:\n%s", grepLines(body, "dial_retries"))
			}
			if logged := strings.Contains(h.logs.String(), `"message":"upstream dial retried"`); logged != (tc.metric != "") {
				t.Errorf("retry logged: %v, want %v", logged, tc.metric != "")
			}
			if want := fmt.Sprintf(`"dial_tries":%d`, tc.handshakes); !strings.Contains(h.logs.String(), want) {
				t.Errorf("no %s in the session's last line:\n%s", want, h.logs.String())
			}
		})
	}
}

// TestUpstreamRedirectNotFollowed: a 3xx from upstream is Deepgram's answer,
// not a place to go. Followed, the handshake would take the key (and the
// forwarded query, in a Referer) to whatever Location names; here that is a
// second upstream that would accept it.
func TestUpstreamRedirectNotFollowed(t *testing.T) {
	elsewhere := fakedeepgram.Start(fakedeepgram.Options{APIKey: testAPIKey})
	// Cleanups run last first: this one after the harness's, which ends a
	// session that did reach elsewhere.
	t.Cleanup(elsewhere.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(elsewhere.URL, "ws://", "http://", 1)+r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(redirector.Close)
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": "ws" + strings.TrimPrefix(redirector.URL, "http") + "/v1/agent/converse"},
		fakedeepgram.Options{})
	c := h.dial("service=agent&keyterms=private-words")
	if e := expectType(t, c, "Error"); e["code"] != "UPSTREAM_REJECTED" || !strings.Contains(e["description"].(string), "HTTP 302") {
		t.Fatalf("Error frame %v, want UPSTREAM_REJECTED naming HTTP 302", e)
	}
	expectClose(t, c, websocket.StatusBadGateway)
	h.relay.drain(time.Second)
	if hs := elsewhere.Handshakes(); len(hs) != 0 {
		t.Fatalf("the redirect was followed: the other server got %d handshake(s), with the key: %v",
			len(hs), hs[0].Header.Get("Authorization") == "Token "+testAPIKey)
	}
	if !strings.Contains(h.logs.String(), `"upstream_status":302`) {
		t.Errorf("the failure is not logged with Deepgram's status:\n%s", grepLines(h.logs.String(), "upstream dial failed"))
	}
}

// TestClientGoneDuringDial: a client that leaves while Deepgram is being
// dialled is its own ending, not a Deepgram failure: no WARNING and nothing
// in dgrelay_upstream_failures_total, or any client could raise an outage
// alert by opening and dropping connections.
func TestClientGoneDuringDial(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{HandshakeDelay: 30 * time.Second})
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET /ws/deepgram-proxy/?service=agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(h.fake.Handshakes()) == 1 }) // the dial is under way
	// The client ends its side only, and reads on: it is told nothing,
	// not net/http's default 200 for a handler that wrote no answer.
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(conn); len(got) != 0 || err != nil {
		t.Errorf("a client that left during the dial read %q (%v), want the connection closed unanswered", got, err)
	}
	waitForLog(t, h.logs, `"service":"agent"`) // the handler's one line
	h.relay.drain(5 * time.Second)

	logs := h.logs.String()
	if strings.Contains(logs, `"severity":"WARNING"`) || strings.Contains(logs, "upstream dial failed") {
		t.Errorf("a client leaving was logged as a Deepgram failure:\n%s", logs)
	}
	if !strings.Contains(grepLines(logs, `"severity":"INFO"`), `"cause":"client_gone"`) {
		t.Errorf("no INFO line with cause client_gone:\n%s", logs)
	}
	m := httptest.NewServer(h.relay.metricsServer().Handler)
	defer m.Close()
	body := scrape(t, m.URL+"/metrics")
	if strings.Contains(body, "dgrelay_upstream_failures_total{") {
		t.Errorf("counted as a Deepgram failure:\n%s", grepLines(body, "upstream_failures"))
	}
	if !strings.Contains(body, `dgrelay_sessions_total{outcome="client_gone",service="agent"} 1`) {
		t.Errorf("not counted as client_gone:\n%s", grepLines(body, "sessions_total"))
	}
	if strings.Contains(body, `result="error"`) {
		t.Errorf("the dial is counted as an error:\n%s", grepLines(body, "dial_seconds_count"))
	}
}

// TestUpstreamTLS dials the upstream over wss://, as production does: the
// handshake-only transport verifies the certificate against its roots and
// sends SNI, and a certificate it cannot verify is UPSTREAM_UNAVAILABLE.
func TestUpstreamTLS(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: true, APIKey: testAPIKey, EchoAudio: true})
	defer fake.Close()
	env := map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse"}

	t.Run("trusted", func(t *testing.T) {
		h := newHarness(t, env, fakedeepgram.Options{})
		trust(h, fake)
		c := h.agentSession("service=agent")
		write(t, c, websocket.MessageBinary, []byte{9, 8, 7})
		if _, data := read(t, c); !bytes.Equal(data, []byte{9, 8, 7}) {
			t.Fatalf("echo %v", data)
		}
		c.Close(websocket.StatusNormalClosure, "")

		// The next session resumes the TLS session the first was given.
		c = h.dial("service=agent")
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
		hs := fake.Handshakes()
		var resumed []bool
		for _, h := range hs {
			resumed = append(resumed, h.Resumed)
		}
		if len(resumed) != 2 || resumed[0] || !resumed[1] {
			t.Fatalf("handshakes resumed %v, want [false true]", resumed)
		}
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		h := newHarness(t, env, fakedeepgram.Options{})
		c := h.dial("service=agent")
		if e := expectType(t, c, "Error"); e["code"] != "UPSTREAM_UNAVAILABLE" {
			t.Fatalf("Error frame %v", e)
		}
		expectClose(t, c, websocket.StatusBadGateway)
		if strings.Contains(h.logs.String(), "upstream dial retried") {
			t.Error("a certificate that does not verify was tried again")
		}
		// The operator needs the cause, which a Go dial error names last,
		// after the URL and the address.
		h.settled()
		if !strings.Contains(h.logs.String(), "unknown authority") {
			t.Errorf("the dial failure's log line lost its cause:\n%s", h.logs.String())
		}
	})
}

// TestUpstreamTLSFrames: a TLS upstream is read when its socket is readable,
// like a plain one, so records that come split, several to a read, or
// several to a frame all reach the client whole and in order, and the close
// handshake runs over TLS.
func TestUpstreamTLSFrames(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: true, APIKey: testAPIKey, EchoAudio: true})
	defer fake.Close()
	h := newHarness(t, map[string]string{"DEEPGRAM_AGENT_URL": fake.URL + "/v1/agent/converse"}, fakedeepgram.Options{})
	trust(h, fake)
	c := h.agentSession("")
	c.SetReadLimit(1 << 20)
	live := h.relay.sessions.snapshot()
	if len(live) != 1 || !live[0].upstream.Polled() {
		t.Fatal("the TLS upstream is not read through its socket")
	}

	// A burst of TTS audio: records arrive back to back, many to a read.
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Stream","bytes":1920,"interval_ms":0,"count":300}`))
	for i := range 300 {
		if typ, data := read(t, c); typ != websocket.MessageBinary || len(data) != 1920 {
			t.Fatalf("message %d: %v, %d bytes", i, typ, len(data))
		}
	}
	// Three frames in one record.
	three := hex.EncodeToString([]byte("\x81\x01a\x81\x01b\x82\x02cd"))
	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"`+three+`"}`))
	for _, want := range []string{"a", "b", "cd"} {
		if _, data := read(t, c); string(data) != want {
			t.Fatalf("got %q, want %q", data, want)
		}
	}
	// A frame over many records (a record holds 16 KiB at most).
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000)
	write(t, c, websocket.MessageBinary, big)
	if typ, data := read(t, c); typ != websocket.MessageBinary || !bytes.Equal(data, big) {
		t.Fatalf("the 80,000 B echo came back as %v, %d bytes", typ, len(data))
	}

	write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Close","code":4000,"reason":"bye"}`))
	if ce := expectClose(t, c, 4000); ce.Reason != "bye" {
		t.Fatalf("reason %q", ce.Reason)
	}
	if got := <-fake.Closed(); got.Code != 4000 {
		t.Fatalf("upstream got %+v", got)
	}
}
