package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// rawRequest writes req as it is to the relay's public port and reads one
// response: for requests Go's client will not send (HTTP/1.0, a header
// twice).
func rawRequest(t *testing.T, h *harness, req string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp
}

// TestMalformedHandshakeDialsNothing: an upgrade request that coder/websocket's
// Accept would refuse gets 400 before Deepgram is dialled, so it costs no
// upstream handshake (and no Deepgram connection opened only to be dropped).
func TestMalformedHandshakeDialsNothing(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	const key = "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455's example: 16 bytes
	request := func(proto string, headers ...string) string {
		return "GET /ws/deepgram-proxy/?service=agent " + proto + "\r\nHost: relay.example\r\n" +
			"Connection: Upgrade\r\nUpgrade: websocket\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	}
	cases := []struct {
		name string
		req  string
	}{
		{"HTTP/1.0", request("HTTP/1.0", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: "+key)},
		{"no key", request("HTTP/1.1", "Sec-WebSocket-Version: 13")},
		{"empty key", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: ")},
		{"key not base64", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: not a key!")},
		{"key of 15 bytes", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA")},
		{"key of 17 bytes", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=")},
		{"key base64url", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: ____________________-w==")},
		{"key twice", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: "+key, "Sec-WebSocket-Key: "+key)},
		{"two keys in one header", request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: "+key+", "+key)},
		{"version 8", request("HTTP/1.1", "Sec-WebSocket-Version: 8", "Sec-WebSocket-Key: "+key)},
		{"no version", request("HTTP/1.1", "Sec-WebSocket-Key: "+key)},
	}
	for _, tc := range cases {
		before := len(h.fake.Handshakes())
		resp := rawRequest(t, h, tc.req)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", tc.name, resp.StatusCode)
		}
		if n := len(h.fake.Handshakes()); n != before {
			t.Errorf("%s: Deepgram was dialled for a handshake the relay refuses", tc.name)
		}
	}

	// The same request with a good key (padded with spaces, which RFC 6455
	// allows) opens a session.
	before := len(h.fake.Handshakes())
	resp := rawRequest(t, h, request("HTTP/1.1", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key:  "+key+" "))
	if resp.StatusCode != http.StatusSwitchingProtocols || len(h.fake.Handshakes()) != before+1 {
		t.Errorf("a good handshake: status %d, %d upstream handshakes; want 101 and 1", resp.StatusCode, len(h.fake.Handshakes())-before)
	}
	h.upstreamClosed()
}

// FuzzHandshakeAgreesWithAccept holds the relay's pre-dial checks to
// coder/websocket's own: a request passes isWebSocketUpgrade and badHandshake
// exactly when Accept's verification passes (Accept then fails only to
// hijack the recorder, 501). A request the relay lets through and Accept
// refuses would dial Deepgram for nothing.
func FuzzHandshakeAgreesWithAccept(f *testing.F) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", key, "")
	f.Add(uint8(0), "GET", "Upgrade", "websocket", "13", key, "")
	f.Add(uint8(1), "POST", "Upgrade", "websocket", "13", key, "")
	f.Add(uint8(1), "GET", "keep-alive, upgrade", "WebSocket", "13", key, "")
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", key, key)
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", "AAAAAAAAAAAAAAAAAAAA", "")
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "13", key+","+key, "")
	f.Add(uint8(1), "GET", "Upgrade", "websocket", "8", key, "")
	f.Add(uint8(1), "GET", "close", "websocket", "13", key, "")
	f.Add(uint8(1), "GET", "Upgrade", "h2c", "13", key, "")
	f.Add(uint8(1), "GET", ",", ",", "13", " "+key+" ", "")
	f.Fuzz(func(t *testing.T, minor uint8, method, connection, upgrade, version, key1, key2 string) {
		r := httptest.NewRequest(http.MethodGet, "/ws/deepgram-proxy/", nil)
		r.Method, r.Proto, r.ProtoMajor, r.ProtoMinor = method, "HTTP/1."+strconv.Itoa(int(minor)), 1, int(minor)
		for name, v := range map[string]string{"Connection": connection, "Upgrade": upgrade, "Sec-WebSocket-Version": version, "Sec-WebSocket-Key": key1} {
			if v != "" {
				r.Header.Set(name, v)
			}
		}
		if key2 != "" {
			r.Header.Add("Sec-WebSocket-Key", key2)
		}
		relayPasses := isWebSocketUpgrade(r) && badHandshake(r) == ""
		w := httptest.NewRecorder()
		_, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		acceptPasses := err != nil && w.Code == http.StatusNotImplemented
		if relayPasses != acceptPasses {
			t.Fatalf("relay passes: %v, Accept's checks pass: %v (%d %v) for %s %s %q",
				relayPasses, acceptPasses, w.Code, err, method, r.Proto, r.Header)
		}
	})
}

// FuzzTokenFrom: whatever the handshake carries, token extraction neither
// panics nor takes a token from anywhere but the bearer pair or ?token=.
func FuzzTokenFrom(f *testing.F) {
	f.Add("bearer, eyJ.a.b", "", "service=agent")
	f.Add("", "", "token=eyJ.a.b&service=agent")
	f.Add("bearer", "", "token=x")
	f.Add("token, raw-key", "", "")
	f.Add("Bearer,,  x ,y", "", "token=%zz")
	f.Add(" , ", "", "token=a&token=b")
	f.Add("", "Bearer eyJ.h.s", "token=q")
	f.Add("", "Token dg-key", "token=q")
	f.Fuzz(func(t *testing.T, protocols, authorization, query string) {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.URL.RawQuery = query
		if protocols != "" {
			r.Header.Set("Sec-WebSocket-Protocol", protocols)
		}
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		tok, err := tokenFrom(r)
		offered := headerTokens(r.Header, "Sec-WebSocket-Protocol")
		if len(offered) > 0 {
			i := slices.IndexFunc(offered, func(p string) bool { return strings.EqualFold(p, "bearer") })
			switch {
			case i < 0 && err != errNoBearer:
				t.Fatalf("offered %q without bearer: %q, %v", offered, tok, err)
			case i >= 0 && i+1 < len(offered) && tok != offered[i+1]:
				t.Fatalf("offered %q: took %q", offered, tok)
			case i >= 0 && i+1 == len(offered) && tok != "":
				t.Fatalf("bearer alone gave %q", tok)
			}
			return
		}
		if err != nil {
			t.Fatalf("no subprotocols: %v", err)
		}
		if scheme, bearer, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "bearer") {
			if tok != strings.TrimSpace(bearer) {
				t.Fatalf("Authorization %q: took %q", authorization, tok)
			}
			return
		}
		if q, perr := url.ParseQuery(query); perr == nil && tok != q.Get("token") {
			t.Fatalf("query %q: took %q", query, tok)
		}
	})
}

// TestHTTPAnswers covers every refusal made before the upgrade.
func TestHTTPAnswers(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	base := h.srv.URL
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
		"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	cases := []struct {
		name   string
		path   string
		header http.Header
		status int
	}{
		{"healthz", "/healthz", nil, 200},
		{"readyz", "/readyz", nil, 200},
		{"plain GET to the WebSocket path", "/ws/deepgram-proxy/", nil, 426},
		{"plain GET without the trailing slash", "/ws/deepgram-proxy", nil, 426},
		{"unknown service", "/ws/deepgram-proxy/?service=speak", upgrade, 400},
		{"malformed query", "/ws/deepgram-proxy/?service=%zz", upgrade, 400},
		{"conflicting services", "/ws/deepgram-proxy/?service=agent&service=transcription", upgrade, 400},
		{"old WebSocket version", "/ws/deepgram-proxy/", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"8"}}, 400},
		{"other path", "/ws/deepgram-proxy/extra", upgrade, 404},
	}
	for _, tc := range cases {
		if resp := get(t, base+tc.path, tc.header); resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
	big := http.Header{"X-Padding": {strings.Repeat("p", 24<<10)}}
	if resp := get(t, base+"/ws/deepgram-proxy/", big); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: status %d, want 431", resp.StatusCode)
	}
	if n := len(h.fake.Handshakes()); n != 0 {
		t.Errorf("%d upstream dials for requests refused before the upgrade", n)
	}
}

func TestOrigins(t *testing.T) {
	h := newHarness(t, map[string]string{"ALLOWED_ORIGINS": "app.example.com,*.trusted.dev,https://secure.example.org"}, fakedeepgram.Options{})
	relayHost := strings.TrimPrefix(h.srv.URL, "http://")
	for origin, allowed := range map[string]bool{
		"":                             true, // not a browser: on to authentication
		"https://app.example.com":      true,
		"https://eu.trusted.dev":       true,
		"https://secure.example.org":   true,
		"http://secure.example.org":    false,
		"http://" + relayHost:          true, // the relay's own host
		"https://evil.example.com":     false,
		"https://app.example.com.evil": false,
		"null":                         false,
	} {
		before := len(h.fake.Handshakes())
		hdr := http.Header{}
		if origin != "" {
			hdr.Set("Origin", origin)
		}
		c, err := h.tryDial("", &websocket.DialOptions{HTTPHeader: hdr})
		switch {
		case allowed && err != nil:
			t.Errorf("origin %q refused: %v", origin, err)
		case allowed:
			expectType(t, c, "Welcome")
			c.Close(websocket.StatusNormalClosure, "")
		case err == nil || !strings.Contains(err.Error(), "403"):
			t.Errorf("origin %q: want HTTP 403, got %v", origin, err)
		case len(h.fake.Handshakes()) != before:
			t.Errorf("origin %q: dialled upstream", origin)
		}
	}
	// One address: its first refused origin is logged, with the entry that
	// would allow it; the rest within REFUSAL_WINDOW are counted.
	line := regexp.MustCompile(`"refusal":"origin","origin":"([^"]+)","fix":"([^"]+)"`)
	if m := line.FindAllStringSubmatch(h.logs.String(), -1); len(m) != 1 {
		t.Errorf("%d refused origins logged from one address, want 1:\n%s", len(m), h.logs.String())
	} else if fix := originFix(m[0][1]); m[0][2] != fix || m[0][1] != "null" && !strings.Contains(fix, "to allow this page, add ") {
		t.Errorf("refused origin %q logged with fix %q, want %q", m[0][1], m[0][2], fix)
	}
}

// TestOriginRefusalLoggedOnce: an address's refused origins, the same one
// repeated or made up anew, are counted every time but logged once a
// REFUSAL_WINDOW, and again once the window has passed.
func TestOriginRefusalLoggedOnce(t *testing.T) {
	const window = 400 * time.Millisecond
	h := newHarness(t, map[string]string{"ALLOWED_ORIGINS": "app.example.com", "REFUSAL_WINDOW": window.String()}, fakedeepgram.Options{})
	refuse := func(origin string) {
		t.Helper()
		if _, err := h.tryDial("", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("%s: want HTTP 403, got %v", origin, err)
		}
	}
	for i := range 20 {
		refuse("https://evil.example.com")
		refuse(fmt.Sprintf("https://made-up-%d.example.com", i))
	}
	logs := h.logs.String()
	if n := strings.Count(logs, `"refusal":"origin"`); n != 1 || !strings.Contains(logs, `"refusal":"origin","origin":"https://evil.example.com"`) {
		t.Errorf("%d origin lines, want the first one only:\n%s", n, logs)
	}
	if m := scrapeHandler(t, h); !strings.Contains(m, `dgrelay_refusals_total{reason="origin"} 40`) {
		t.Errorf("refusals:\n%s", grepLines(m, "dgrelay_refusals_total"))
	}
	time.Sleep(window + 100*time.Millisecond)
	refuse("https://other.example.com")
	if !strings.Contains(h.logs.String(), `"refusal":"origin","origin":"https://other.example.com"`) {
		t.Errorf("a refused origin after the window was not logged:\n%s", h.logs.String())
	}
}

// TestOriginForLog: a refused origin is logged as a browser sends it, and
// anything else by its length alone, whatever the client put in it.
func TestOriginForLog(t *testing.T) {
	for _, origin := range []string{"https://app.example.com:8443", "null", "https://xn--bcher-kva.example",
		"http://[::1]:5173", "http://127.0.0.1:3000", "https://a-b.example.", "http://my_app:3000",
		"chrome-extension://abcdefghijklmnopabcdefghijklmnop", "HTTPS://APP.EXAMPLE.COM"} {
		if got := originForLog(origin); got != origin {
			t.Errorf("originForLog(%q) = %q, want it as it is", origin, got)
		}
	}
	jwt := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJleHAiOjE5OTk5OTk5OTksImlhdCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
	for _, origin := range []string{"http://user:secret@evil.example", "http://ev\til.\u202eexample", "https://a@b@evil.example",
		"https://b\u00fccher.example", "https://x.example\x00\xff", "https://evil.example/" + jwt, "https://evil.example?t=" + jwt,
		"https://evil.example#" + jwt, "https://" + jwt, "https://*", "https://a.com,*", "https://" + strings.Repeat("a.", 130) + "com",
		"evil.example", "https:", "https://evil.example/", "http://[fe80::1%25" + jwt + "]", "http://[fe80::1%25x,*,y]",
		"http://[fe80::1%25\u202egnp.live]", jwt + "://a.example", "http://a.example:" + strings.Repeat("9", 2000),
		"ftp://a.example", "javascript://a.example",
		"http://eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6ZWQiLCJleHAiOjE5OTk5OTk5OTl9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"} {
		want := fmt.Sprintf("[not a browser origin: %d bytes]", len(origin))
		if got := originForLog(origin); got != want {
			t.Errorf("originForLog(%q) = %q, want %q", origin, got, want)
		}
		if fix := originFix(origin); strings.Contains(fix, "add ") || strings.Contains(fix, "evil") {
			t.Errorf("originFix(%q) = %q: it suggests or quotes what is no browser origin", origin, fix)
		}
	}
}

// TestOriginLocalDevelopment: a dev server's page (Vite on
// http://localhost:5173) is another origin than the relay on :8080; the
// port is part of it, so "localhost" alone does not allow it, and the
// refusal names the entry that would.
func TestOriginLocalDevelopment(t *testing.T) {
	page := http.Header{"Origin": {"http://localhost:5173"}}
	h := newHarness(t, map[string]string{"ALLOWED_ORIGINS": "localhost"}, fakedeepgram.Options{})
	_, resp, err := websocket.Dial(context.Background(), h.wsURL, &websocket.DialOptions{HTTPHeader: page})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("localhost:5173 with ALLOWED_ORIGINS=localhost: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "add localhost:5173 to ALLOWED_ORIGINS") {
		t.Errorf("403 body %q does not say what to set", body)
	}

	for _, allow := range []string{"localhost:5173,localhost:3000", "localhost:*"} {
		h = newHarness(t, map[string]string{"ALLOWED_ORIGINS": allow}, fakedeepgram.Options{})
		c, err := h.tryDial("", &websocket.DialOptions{HTTPHeader: page})
		if err != nil {
			t.Fatalf("localhost:5173 with ALLOWED_ORIGINS=%s: %v", allow, err)
		}
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// TestOriginFixAllowsThatOriginOnly: the entry a refusal suggests, set as
// ALLOWED_ORIGINS, lets that page in and no other. An IPv6 page's brackets
// are a character class to the matcher, so they come escaped. A host that
// is itself a pattern or a list ("*", "*.com", "a.com,*") gets no entry: no
// browser sends one, and anyone could send it to have the relay's log and
// 403 advise allowing every origin.
func TestOriginFixAllowsThatOriginOnly(t *testing.T) {
	h := newHarness(t, map[string]string{"ALLOWED_ORIGINS": "app.example.com"}, fakedeepgram.Options{})
	suggested := regexp.MustCompile(`add (\S+) to ALLOWED_ORIGINS`)
	// entryFor is the entry the 403 for origin suggests, or "".
	entryFor := func(h *harness, origin string) string {
		t.Helper()
		_, resp, err := websocket.Dial(context.Background(), h.wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("origin %q: %v, want 403", origin, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if m := suggested.FindStringSubmatch(string(body)); m != nil {
			return m[1]
		}
		return ""
	}
	for origin, other := range map[string]string{
		"http://localhost:5173":   "http://localhost:5174",
		"http://[::1]:5173":       "http://1:5173",
		"https://app.example.org": "https://evil.example.org",
	} {
		entry := entryFor(h, origin)
		if entry == "" {
			t.Errorf("origin %q: no entry suggested", origin)
			continue
		}
		allowing := newHarness(t, map[string]string{"ALLOWED_ORIGINS": entry}, fakedeepgram.Options{})
		c, err := allowing.tryDial("", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		if err != nil {
			t.Errorf("origin %q with the suggested ALLOWED_ORIGINS=%s: %v", origin, entry, err)
		} else {
			expectType(t, c, "Welcome")
			c.Close(websocket.StatusNormalClosure, "")
		}
		if c, err := allowing.tryDial("", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {other}}}); err == nil {
			c.CloseNow()
			t.Errorf("ALLOWED_ORIGINS=%s, suggested for %q, also allows %q", entry, origin, other)
		}
	}
	for _, origin := range []string{"https://*", "https://*.com", "https://a.com,*", "http://*:8080"} {
		if entry := entryFor(h, origin); entry != "" {
			t.Errorf("origin %q: the 403 suggests ALLOWED_ORIGINS entry %q", origin, entry)
		}
	}
	if lines := grepLines(h.logs.String(), `"fix":"to allow this page, add *`); lines != "" {
		t.Errorf("the log suggests a pattern:\n%s", lines)
	}
}

func TestClientIP(t *testing.T) {
	cases := []struct {
		name, trust, flyIP string
		xff                []string
		want               string
	}{
		{"untrusted", proxyNone, "2001:db8::1", []string{"203.0.113.7"}, "10.1.2.3"},
		{"cloudrun", proxyCloudRun, "", []string{"203.0.113.7"}, "203.0.113.7"},
		{"cloudrun: what the client wrote comes first", proxyCloudRun, "", []string{"6.6.6.6, 203.0.113.7"}, "203.0.113.7"},
		{"cloudrun: the last of several lines", proxyCloudRun, "", []string{"6.6.6.6", "7.7.7.7,203.0.113.7"}, "203.0.113.7"},
		{"cloudrun: a client's Fly-Client-IP", proxyCloudRun, "6.6.6.6", nil, "10.1.2.3"},
		{"fly", proxyFly, "2001:db8::1", []string{"6.6.6.6, 203.0.113.7, 66.241.124.1"}, "2001:db8::1"},
		{"fly: no header", proxyFly, "", []string{"203.0.113.7"}, "10.1.2.3"},
		{"bad headers fall back to the socket", proxyCloudRun, "", []string{"garbage"}, "10.1.2.3"},
		{"a bad Fly-Client-IP falls back to the socket", proxyFly, "not-an-ip", nil, "10.1.2.3"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = "10.1.2.3:5555"
		if tc.flyIP != "" {
			r.Header.Set("Fly-Client-IP", tc.flyIP)
		}
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := clientIP(r, tc.trust); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}
