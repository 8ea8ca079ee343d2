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
// matcher reads [::1] as a character class). A host that is itself a
// pattern or a list ("*", "*.com", "a.com,*") gets no entry: no browser
// sends one, and anyone could send it to have the log advise allowing
// every origin.
func originFix(origin string) string {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || strings.ContainsAny(u.Host, `*?\,`) {
		return "a browser origin is scheme://host[:port]; ALLOWED_ORIGINS cannot allow " + strconv.Quote(origin)
	}
	entry := strings.NewReplacer("[", `\[`, "]", `\]`).Replace(u.Host)
	return "to allow this page, add " + entry + " to ALLOWED_ORIGINS (comma-separated; the port is part of the origin)"
}

// originForLog is origin as a log line shows it. A browser's Origin is
// ASCII (an international name comes as punycode) and holds no user, so
// anything else is the client's own doing: a user part is cut out (it may be
// a password) and what is not printable ASCII is escaped (a bidi override
// would reorder the line in a log viewer).
func originForLog(origin string) string {
	if scheme, rest, ok := strings.Cut(origin, "://"); ok {
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			origin = scheme + "://[user]@" + rest[at+1:]
		}
	}
	q := strconv.QuoteToASCII(origin)
	return q[1 : len(q)-1]
}
