package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// upstream is one Deepgram endpoint a service routes to.
type upstream struct {
	base *url.URL
	// host is the Host header: Deepgram answers 404 to agent.deepgram.com:443,
	// so a default port never goes in it.
	host string
}

func newUpstream(raw string) (upstream, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return upstream{}, fmt.Errorf("parse upstream: %w", err)
	}
	host := u.Host
	if p := u.Port(); (u.Scheme == "wss" && p == "443") || (u.Scheme == "ws" && p == "80") {
		host = u.Hostname()
	}
	return upstream{base: u, host: host}, nil
}

// target is the URL dialled for one session: the upstream's own query, then
// the client's parameters in their order and encoding.
func (u upstream) target(forwarded string) string {
	t := *u.base
	switch {
	case t.RawQuery == "":
		t.RawQuery = forwarded
	case forwarded != "":
		t.RawQuery += "&" + forwarded
	}
	return t.String()
}

// routeError is a request refused before the upgrade, with its HTTP status.
type routeError struct {
	status int
	msg    string
}

func (e *routeError) Error() string { return e.msg }

// route picks the upstream from ?service= and returns the query to forward:
// every parameter but service and token, in the client's order and encoding.
func (rl *relay) route(rawQuery string) (service string, up upstream, forwarded string, err error) {
	var kept []string
	seen := false
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		rawKey, rawValue, _ := strings.Cut(part, "=")
		key, kerr := url.QueryUnescape(rawKey)
		value, verr := url.QueryUnescape(rawValue)
		if kerr != nil || verr != nil {
			return "", upstream{}, "", &routeError{http.StatusBadRequest, "malformed query string"}
		}
		switch {
		case key == "service":
			if seen && value != service {
				return "", upstream{}, "", &routeError{http.StatusBadRequest, "conflicting service parameters"}
			}
			service, seen = value, true
		case strings.EqualFold(key, "token"):
			// The user's token is for dgrelay only: Deepgram never sees it.
		default:
			kept = append(kept, part)
		}
	}
	switch service {
	case "", "agent":
		return "agent", rl.agent, strings.Join(kept, "&"), nil
	case "transcription":
		return "transcription", rl.listen, strings.Join(kept, "&"), nil
	}
	return "", upstream{}, "", &routeError{http.StatusBadRequest, "unknown service: use agent or transcription"}
}
