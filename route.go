package main

import (
	"fmt"
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

// routeError is why a request's route is refused before the upgrade (the
// answers table's httpBadRoute row, HTTP 400): its words are the body.
type routeError struct{ msg string }

func (e *routeError) Error() string { return e.msg }

// deepgramPaths are the paths Deepgram's SDKs append to the base URL they are
// given, and the service each names. The relay serves every path that ends in
// one of them (after any prefix of the base URL, "/relay/v1/listen"), beside
// PROXY_PATH, so an SDK needs only the relay's base URL. Flux's /v2/listen is
// not among them: it is another protocol on another upstream, which the
// relay has no URL for.
var deepgramPaths = []struct{ suffix, service string }{
	{"/v1/agent/converse", "agent"},
	{"/v1/listen", "transcription"},
}

// pathService is the service a request's path names: "" for PROXY_PATH,
// which leaves the choice to ?service=, else the service of the Deepgram
// path it ends in. ok is false for a path the relay does not serve, and for
// any path containing /openai, where the React component speaks another
// protocol.
func pathService(proxyPath, urlPath string) (service string, ok bool) {
	bare := strings.TrimSuffix(urlPath, "/")
	if bare == strings.TrimSuffix(proxyPath, "/") {
		return "", true
	}
	if strings.Contains(strings.ToLower(bare), "/openai") {
		return "", false
	}
	for _, p := range deepgramPaths {
		if strings.HasSuffix(bare, p.suffix) {
			return p.service, true
		}
	}
	return "", false
}

// routeAt picks the service of a request whose path names byPath ("" for
// PROXY_PATH): the path's service unless ?service= names another, which is
// refused rather than guessed. It returns the query to forward: every
// parameter but service and token, in the client's order and encoding.
func routeAt(byPath, rawQuery string) (service, forwarded string, err *routeError) {
	// A ';' is a separator to some parsers and not to others: a token or
	// a service hidden behind one would reach Deepgram, which may split
	// there, and tokenFrom, which reads the query with net/url (whose
	// ParseQuery refuses ';' since Go 1.17 for that reason), would not see
	// the query at all. In a value it is %3B, as every client encodes it.
	if strings.Contains(rawQuery, ";") {
		return "", "", &routeError{"malformed query string: ';' is no separator (use &, or %3B in a value)"}
	}
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
			return "", "", &routeError{"malformed query string"}
		}
		switch {
		case key == "service":
			if seen && value != service {
				return "", "", &routeError{"conflicting service parameters"}
			}
			service, seen = value, true
		case strings.EqualFold(key, "token"):
			// The user's token is for dgrelay only: Deepgram never sees it.
		default:
			kept = append(kept, part)
		}
	}
	if byPath != "" {
		if seen && service != byPath {
			return "", "", &routeError{fmt.Sprintf(
				"this path is the %s service, but ?service=%s asks for another: drop service= or use the matching path", byPath, service)}
		}
		service = byPath
	}
	switch service {
	case "", "agent":
		return "agent", strings.Join(kept, "&"), nil
	case "transcription":
		return "transcription", strings.Join(kept, "&"), nil
	}
	return "", "", &routeError{"unknown service: use agent or transcription"}
}
