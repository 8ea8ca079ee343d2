package main

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// originChecker allows a browser's Origin by the coder/websocket
// OriginPatterns rules (a pattern match on host[:port], or on scheme://host
// when the pattern has a scheme), and a page on the request's own host when
// that host is this machine (isLoopbackHost). A request without Origin is not
// from a browser and passes, to meet authentication. The own host is not
// allowed in general: a DNS-rebinding page (its name pointed at the relay's
// address) sends its own name as both Host and Origin, so the two agree for
// a foreign page. The README's origin section says so at length.
type originChecker struct {
	patterns []string
}

// newOriginChecker checks ALLOWED_ORIGINS' patterns once, so that a bad one
// stops the start instead of refusing every browser.
func newOriginChecker(patterns []string) (*originChecker, error) {
	for _, p := range patterns {
		if _, err := path.Match(strings.ToLower(p), ""); err != nil {
			return nil, fmt.Errorf("ALLOWED_ORIGINS: bad pattern %q: %w", p, err)
		}
	}
	return &originChecker{patterns: patterns}, nil
}

// allowed reports whether r's Origin may open a session.
func (oc *originChecker) allowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(r.Host, u.Host) && isLoopbackHost(u.Hostname()) {
		return true
	}
	for _, p := range oc.patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// isLoopbackHost reports whether host, a URL's hostname, names this machine
// whatever DNS says: "localhost" (browsers resolve it to loopback themselves,
// RFC 6761 and WHATWG's "potentially trustworthy origin") or a loopback
// address (127.0.0.0/8, ::1). A rebinding page cannot be served from such a
// name: its attacker controls no server there. "*.localhost" is left out:
// not every client keeps it off DNS.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, hostLocal) {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsLoopback()
}

// originFix says what to add to ALLOWED_ORIGINS for origin to pass. The
// entry is the origin's host with its port, since a page on
// http://localhost:5173 is another origin than one on localhost:3000, and
// it matches that host alone: an IPv6 literal's brackets are escaped (the
// matcher reads [::1] as a character class). An origin that is not a
// browser's (browserOrigin) gets no entry and is not quoted: no browser
// sends one, anyone could send a pattern ("*", "a.com,*") to have the log
// advise allowing every origin, and what a client puts there (a token,
// say) is not written to the log.
func originFix(origin string) string {
	u, ok := browserOrigin(origin)
	if !ok {
		return "a browser origin is scheme://host[:port]; ALLOWED_ORIGINS cannot allow this one"
	}
	entry := strings.NewReplacer("[", `\[`, "]", `\]`).Replace(u.Host)
	if strings.ContainsAny(entry, "*?,% ") {
		// No advice that would allow more than this page (or be two
		// entries): browserOrigin should have refused it already.
		return "a browser origin is scheme://host[:port]; ALLOWED_ORIGINS cannot allow this one"
	}
	return "to allow this page, add " + entry + " to ALLOWED_ORIGINS (comma-separated; the port is part of the origin)"
}

// browserOrigin parses origin as a browser sends it (RFC 6454): a scheme
// (browserScheme) and a host, with a port of five digits at most or not,
// in ASCII (an international name comes as punycode), and nothing else (no
// user, path, query or fragment). The host is an IP literal without a zone
// or a DNS name (RFC 1035: labels of letters, digits and hyphens, 63 bytes
// at most, 253 in all; and underscores, which browsers take and container
// names have), none of which begins as a JWT's parts do.
func browserOrigin(origin string) (*url.URL, bool) {
	u, err := url.Parse(origin)
	if err != nil || !browserScheme(u.Scheme) || u.Host == "" || u.User != nil || u.Opaque != "" ||
		u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || len(u.Port()) > 5 {
		return nil, false
	}
	host := u.Hostname()
	if addr, err := netip.ParseAddr(host); err == nil {
		// A zone (fe80::1%eth0) is no browser's: the URL standard refuses
		// a % in an IPv6 host, and url.Parse lets anything through in one.
		return u, addr.Zone() == ""
	}
	if len(host) > 253 {
		return nil, false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return nil, false
		}
		// "eyJ" is base64url for `{"`, the start of every JWT's header
		// and payload: a host made of a token's parts is a token.
		if strings.HasPrefix(label, "eyJ") {
			return nil, false
		}
	}
	return u, true
}

// browserScheme reports whether scheme is one a browser puts in an Origin:
// http, https, or an extension's (chrome-extension, moz-extension,
// safari-web-extension).
func browserScheme(scheme string) bool {
	s := strings.ToLower(scheme)
	return s == "http" || s == "https" || len(s) <= 32 && strings.HasSuffix(s, "-extension") &&
		strings.Trim(s, "abcdefghijklmnopqrstuvwxyz-") == ""
}

// originForLog is a refused origin as a log line shows it: a browser's as it
// came ("null" too: sandboxed and file pages send it), anything else by its
// length alone, since it is the client's own words and may hold anything
// (a token, a password, a bidi override that reorders the line).
func originForLog(origin string) string {
	if _, ok := browserOrigin(origin); ok || origin == "null" {
		return origin
	}
	return "[not a browser origin: " + strconv.Itoa(len(origin)) + " bytes]"
}
