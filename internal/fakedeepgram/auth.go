package fakedeepgram

import (
	"net/http"
	"strings"
)

// authorize checks a handshake's credentials as Deepgram does and returns
// the subprotocol to select.
//
// Deepgram takes a key as "Authorization: Token <key>" and a temporary token
// (from /v1/auth/grant) as "Authorization: Bearer <token>" (docs: the agent
// API reference's handshake, "either token <KEY> or Bearer <JWT>"); a browser,
// which cannot set headers, offers them as the subprotocols ["token", <key>]
// or ["bearer", <token>] (docs: using the Sec-WebSocket-Protocol), and the
// server selects the first one offered. The scheme is matched without regard
// to case, as the docs write it both ways.
func authorize(r *http.Request, opts Options) (subprotocol string, ok bool) {
	offered := subprotocols(r)
	if len(offered) > 0 {
		subprotocol = offered[0]
	}
	if opts.APIKey == "" && opts.AccessToken == "" {
		return subprotocol, true
	}
	scheme, secret, found := strings.Cut(r.Header.Get("Authorization"), " ")
	if !found && len(offered) >= 2 {
		scheme, secret, found = offered[0], offered[1], true
	}
	if !found {
		return subprotocol, false
	}
	switch strings.ToLower(scheme) {
	case "token":
		return subprotocol, opts.APIKey != "" && secret == opts.APIKey
	case "bearer":
		return subprotocol, opts.AccessToken != "" && secret == opts.AccessToken
	}
	return subprotocol, false
}

// subprotocols is what the client offered in Sec-WebSocket-Protocol, in order.
func subprotocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
