package main

import (
	"net/http"
	"testing"

	"dgrelay/internal/fakedeepgram"
)

// noFollow is a client that shows a redirect rather than following it.
var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// statusOf sends one request to url, with header, and returns its status
// and Location.
func statusOf(t *testing.T, method, url string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location")
}

// TestTryPageRedirects: with the page on, what a newcomer types (/try/ and
// the bare host) leads to /try, for GET and HEAD; nothing else under /try/
// does, a WebSocket handshake to / still gets 404, and with PROXY_PATH=/ the
// root stays the WebSocket route's. With the page off, all of them are 404.
func TestTryPageRedirects(t *testing.T) {
	upgrade := http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	on := newHarness(t, map[string]string{"TRY_PAGE": "true"}, fakedeepgram.Options{})
	for _, c := range []struct {
		method, path string
		header       http.Header
		status       int
		location     string
	}{
		{http.MethodGet, "/try/", nil, http.StatusFound, "/try"},
		{http.MethodHead, "/try/", nil, http.StatusFound, "/try"},
		{http.MethodGet, "/", nil, http.StatusFound, "/try"},
		{http.MethodHead, "/", nil, http.StatusFound, "/try"},
		{http.MethodGet, "/try/nothing", nil, http.StatusNotFound, ""},
		{http.MethodGet, "/nothing", nil, http.StatusNotFound, ""},
		{http.MethodPost, "/", nil, http.StatusNotFound, ""},
		{http.MethodGet, "/", upgrade, http.StatusNotFound, ""},
		{http.MethodGet, "/try", nil, http.StatusOK, ""},
	} {
		if status, location := statusOf(t, c.method, on.srv.URL+c.path, c.header); status != c.status || location != c.location {
			t.Errorf("TRY_PAGE=true: %s %s (upgrade %v): %d %q, want %d %q", c.method, c.path, c.header != nil, status, location, c.status, c.location)
		}
	}
	// Followed, the redirect lands on the page.
	if resp, _ := fetch(t, on, http.MethodGet, "/"); resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/try" {
		t.Errorf("GET / followed: %d at %s", resp.StatusCode, resp.Request.URL.Path)
	}

	off := newHarness(t, nil, fakedeepgram.Options{})
	for _, path := range []string{"/", "/try/"} {
		if status, _ := statusOf(t, http.MethodGet, off.srv.URL+path, nil); status != http.StatusNotFound {
			t.Errorf("TRY_PAGE off: GET %s: %d, want 404", path, status)
		}
	}

	root := newHarness(t, map[string]string{"TRY_PAGE": "true", "PROXY_PATH": "/"}, fakedeepgram.Options{})
	if status, location := statusOf(t, http.MethodGet, root.srv.URL+"/", nil); status == http.StatusFound || location != "" {
		t.Errorf("PROXY_PATH=/: GET / was redirected to %q; the root is the WebSocket route", location)
	}
	if status, location := statusOf(t, http.MethodGet, root.srv.URL+"/try/", nil); status != http.StatusFound || location != "/try" {
		t.Errorf("PROXY_PATH=/: GET /try/: %d %q, want 302 /try", status, location)
	}
	c := root.dial("service=agent")
	expectType(t, c, "Welcome")
}
