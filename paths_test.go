package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// TestDeepgramPaths: beside PROXY_PATH, the relay serves every path that ends
// in one of Deepgram's own (what its SDKs append to a base URL), after any
// prefix, each to its service's upstream, with token and service kept from
// Deepgram and every other parameter forwarded. A path naming one service
// and a ?service= naming the other is refused before anything is dialled,
// and so are other paths and any path with /openai in it.
func TestDeepgramPaths(t *testing.T) {
	h := newHarness(t, authEnv(nil), fakedeepgram.Options{})
	base := "ws" + strings.TrimPrefix(h.srv.URL, "http")
	token := userToken(t, "paths-user")
	for _, tc := range []struct{ path, query, upPath, upQuery string }{
		{"/v1/agent/converse", "token=" + token, "/v1/agent/converse", ""},
		{"/relay/v1/agent/converse", "token=" + token + "&mip_opt_out=true", "/v1/agent/converse", "mip_opt_out=true"},
		{"/a/b/v1/agent/converse/", "service=agent&token=" + token, "/v1/agent/converse", ""},
		{"/v1/listen", "model=nova-3&token=" + token + "&encoding=linear16", "/v1/listen", "model=nova-3&encoding=linear16"},
		{"/relay/v1/listen", "service=transcription&token=" + token + "&interim_results=true", "/v1/listen", "interim_results=true"},
		{"/ws/deepgram-proxy/", "service=transcription&token=" + token + "&model=nova-3", "/v1/listen", "model=nova-3"},
		{"/ws/deepgram-proxy", "token=" + token, "/v1/agent/converse", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			before := len(h.fake.Handshakes())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, base+tc.path+"?"+tc.query, nil)
			if err != nil {
				t.Fatalf("dial %s: %v\n%s", tc.path, err, h.logs.String())
			}
			defer c.CloseNow()
			hs := h.fake.Handshakes()
			if len(hs) != before+1 {
				t.Fatalf("%d handshakes upstream, want 1", len(hs)-before)
			}
			if up := hs[len(hs)-1]; up.Path != tc.upPath || up.RawQuery != tc.upQuery {
				t.Errorf("%s?%s reached Deepgram as %s?%s, want %s?%s", tc.path, tc.query, up.Path, up.RawQuery, tc.upPath, tc.upQuery)
			}
			c.Close(websocket.StatusNormalClosure, "")
			h.upstreamClosed()
		})
	}
	for _, tc := range []struct {
		path, query string
		status      int
		body        string
	}{
		{"/v1/agent/converse", "service=transcription", http.StatusBadRequest, "this path is the agent service, but ?service=transcription asks for another"},
		{"/relay/v1/listen", "service=agent", http.StatusBadRequest, "this path is the transcription service, but ?service=agent asks for another"},
		{"/v1/listen", "service=bogus", http.StatusBadRequest, "this path is the transcription service, but ?service=bogus"},
		{"/openai/v1/agent/converse", "", http.StatusNotFound, "404 page not found"},
		{"/x/OpenAI/v1/listen", "", http.StatusNotFound, "404 page not found"},
		{"/v1/agent/converse2", "", http.StatusNotFound, "404 page not found"},
		{"/v1/listen/extra", "", http.StatusNotFound, "404 page not found"},
		{"/v1/agent", "", http.StatusNotFound, "404 page not found"},
		{"/v2/listen", "", http.StatusNotFound, "404 page not found"},
	} {
		before := len(h.fake.Handshakes())
		req, _ := http.NewRequest(http.MethodGet, h.srv.URL+tc.path+"?"+tc.query, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.body) {
			t.Errorf("%s?%s: %d %q, want %d with %q", tc.path, tc.query, resp.StatusCode, body, tc.status, tc.body)
		}
		if len(h.fake.Handshakes()) != before {
			t.Errorf("%s?%s reached Deepgram", tc.path, tc.query)
		}
	}
}

// TestDeepgramPathsPlainHTTP: a plain GET of a Deepgram path is the
// WebSocket route's 426, as on PROXY_PATH; the probes keep their routes.
func TestDeepgramPathsPlainHTTP(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	for path, want := range map[string]int{"/relay/v1/agent/converse": 426, "/v1/listen": 426, "/healthz": 200, "/nope": 404} {
		if resp := get(t, h.srv.URL+path, nil); resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
