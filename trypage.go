package main

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
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

// tryAsset is one response of the try page, built once at start.
type tryAsset struct {
	contentType string
	body        []byte
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
	assets := map[string]tryAsset{tryPath: {"text/html; charset=utf-8", html.Bytes()}}
	for name, contentType := range tryStatics {
		body, err := tryFiles.ReadFile("trypage/" + name)
		if err != nil {
			return nil, fmt.Errorf("try page: %w", err)
		}
		assets[tryPath+"/"+name] = tryAsset{contentType, body}
	}
	return assets, nil
}

// routeTryPage adds the page's routes to mux. A GET pattern takes HEAD too,
// and the mux answers any other method 405 with Allow.
func routeTryPage(mux *http.ServeMux, assets map[string]tryAsset) {
	for route, a := range assets {
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
