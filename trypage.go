package main

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// The try-it page (TRY_PAGE=true): GET /try serves one page that opens the
// microphone, talks to an agent through this relay's own route and plays
// the answer, so that one command and a browser show the whole job working.
// It ships in the binary (go:embed), loads nothing from elsewhere, and runs
// no inline script, so its Content-Security-Policy can forbid everything
// but this origin.

//go:embed trypage
var tryFiles embed.FS

// tryPath is the page's route; its scripts and stylesheet are under it.
const tryPath = "/try"

// tryCSP lets the page load its own scripts, stylesheet and worklet and open
// a WebSocket to its own origin (CSP3's 'self' covers ws: and wss: there),
// and nothing else: no inline script, no other host, no framing (a framed
// page could trick a user into granting the microphone).
const tryCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// tryAsset is one response of the try page, built once at start: a file, or
// a redirect to location.
type tryAsset struct {
	contentType string
	body        []byte
	location    string
}

// tryStatics are the page's files served as they are, with their types.
var tryStatics = map[string]string{
	"app.js":     "text/javascript; charset=utf-8",
	"capture.js": "text/javascript; charset=utf-8",
	"style.css":  "text/css; charset=utf-8",
}

// tryPageAssets renders the page for this relay, keyed by route: the
// WebSocket route it connects to and whether it asks for a user's token are
// written into the page (no secret is), so it needs no request of its own
// to learn them.
func tryPageAssets(proxyPath string, auth bool) (map[string]tryAsset, error) {
	page, err := template.ParseFS(tryFiles, "trypage/index.html")
	if err != nil {
		return nil, fmt.Errorf("try page: %w", err)
	}
	var html bytes.Buffer
	if err := page.Execute(&html, struct {
		ProxyPath string
		Auth      bool
	}{proxyPath, auth}); err != nil {
		return nil, fmt.Errorf("try page: %w", err)
	}
	assets := map[string]tryAsset{tryPath: {contentType: "text/html; charset=utf-8", body: html.Bytes()}}
	for name, contentType := range tryStatics {
		body, err := tryFiles.ReadFile("trypage/" + name)
		if err != nil {
			return nil, fmt.Errorf("try page: %w", err)
		}
		assets[tryPath+"/"+name] = tryAsset{contentType: contentType, body: body}
	}
	// What a newcomer types: /try/ and the bare host lead to the page. "/"
	// stays the WebSocket's when PROXY_PATH is "/".
	assets[tryPath+"/"] = tryAsset{location: tryPath}
	if strings.Trim(proxyPath, "/") != "" {
		assets["/"] = tryAsset{location: tryPath}
	}
	return assets, nil
}

// tryRedirect sends a browser to location; a WebSocket handshake, which
// cannot follow it, gets the 404 it got before the page was on.
func tryRedirect(w http.ResponseWriter, r *http.Request, location string) {
	if r.Header.Get("Upgrade") != "" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, location, http.StatusFound)
}

// tryPageAt is the start line's try_page: off, or the address to open on
// the first of the public listeners lns: the port it really holds, and
// localhost for a loopback or every-interface listener, since browsers give
// the microphone to http:// pages only there.
func tryPageAt(on bool, lns []net.Listener) string {
	if !on || len(lns) == 0 {
		return "off"
	}
	addr, ok := lns[0].Addr().(*net.TCPAddr)
	if !ok {
		return lns[0].Addr().String() + tryPath
	}
	host := "localhost"
	if !addr.IP.IsLoopback() && !addr.IP.IsUnspecified() {
		host = addr.IP.String()
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port)) + tryPath
}

// routeTryPage adds the page's routes to mux. A GET pattern takes HEAD too,
// and the mux answers any other method 405 with Allow.
func routeTryPage(mux *http.ServeMux, assets map[string]tryAsset) {
	for route, a := range assets {
		if a.location != "" {
			// {$}: the path alone, not every path under it.
			mux.HandleFunc("GET "+route+"{$}", func(w http.ResponseWriter, r *http.Request) { tryRedirect(w, r, a.location) })
			continue
		}
		mux.HandleFunc("GET "+route, func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", a.contentType)
			h.Set("Content-Length", strconv.Itoa(len(a.body)))
			h.Set("Content-Security-Policy", tryCSP)
			h.Set("X-Content-Type-Options", "nosniff")
			// The page is rendered for this relay's settings: a cached copy
			// could outlive a change of PROXY_PATH or authentication.
			h.Set("Cache-Control", "no-store")
			h.Set("Referrer-Policy", "no-referrer")
			_, _ = w.Write(a.body)
		})
		// Other methods: 405 here, since the catch-all route of
		// Deepgram's paths (routes) takes every method the mux would
		// otherwise have answered 405 for.
		mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		})
	}
}
