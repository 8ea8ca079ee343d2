package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// badHandshake says what is wrong with an upgrade request that
// coder/websocket's Accept would refuse (its verifyClientRequest: HTTP/1.1,
// version 13, one Sec-WebSocket-Key that is the base64 of 16 bytes), or ""
// when nothing is. ServeHTTP asks before it dials Deepgram, which it does
// before Accept: without this, such a request opened a Deepgram connection
// only to drop it. Method, Connection and Upgrade are isWebSocketUpgrade's.
func badHandshake(r *http.Request) string {
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return "a WebSocket handshake needs HTTP/1.1"
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		return "unsupported WebSocket handshake (want version 13)"
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return "a WebSocket handshake needs one Sec-WebSocket-Key"
	}
	// RFC 6455 §4.2.1: the key is 16 random bytes in base64; the library
	// trims spaces around it first, and so does this.
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(keys[0])); err != nil || len(k) != 16 {
		return "Sec-WebSocket-Key must be the base64 of 16 bytes"
	}
	return ""
}

// isWebSocketUpgrade reports whether r asks for a WebSocket, checked before
// anything is dialled so that a plain request costs nothing upstream.
func isWebSocketUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet &&
		httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") &&
		httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "websocket")
}

// checkRequest checks what an upgrade request says of itself (a WebSocket
// handshake the library would accept, the service, the origin, where the
// token is) and answers it with an HTTP status when it fails.
func (rl *relay) checkRequest(w http.ResponseWriter, r *http.Request) (service string, up upstream, forwarded, token string, ok bool) {
	if !isWebSocketUpgrade(r) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "this endpoint speaks WebSocket only", http.StatusUpgradeRequired)
		return
	}
	if msg := badHandshake(r); msg != "" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	byPath, _ := pathService(rl.cfg.ProxyPath, r.URL.Path)
	service, up, forwarded, err := rl.routeAt(byPath, r.URL.RawQuery)
	if err != nil {
		var re *routeError
		errors.As(err, &re)
		http.Error(w, re.msg, re.status)
		return
	}
	if !rl.origins.allowed(r) {
		rl.metrics.refusals.WithLabelValues("origin").Inc()
		// The origin is logged (bounded) with the entry that would allow
		// it, so that a missing ALLOWED_ORIGINS entry is easy to fix; it is
		// a page's address, not a secret. A browser does not show the body.
		fix := rl.scrub.CleanTo(originFix(r.Header.Get("Origin")), errorDetailLimit)
		rl.logFor(cloudTrace(r, rl.cfg.GoogleCloudProject)).Info("session refused", "refusal", "origin", "origin", rl.redact(r.Header.Get("Origin")),
			"fix", fix, "remote", clientIP(r, rl.cfg.TrustProxyHeaders))
		http.Error(w, "origin not allowed: "+fix, http.StatusForbidden)
		return
	}
	if token, err = tokenFrom(r); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	return service, up, forwarded, token, true
}

// errNoBearer is a handshake that offers subprotocols but not "bearer": the
// relay could select none, and the browser would fail the handshake anyway.
var errNoBearer = errors.New(`offer the "bearer" subprotocol (with the token after it) or none`)

// tokenFrom returns the user's token: from the subprotocol pair
// "bearer, <jwt>" (which keeps it out of URLs and request logs; browsers and
// Deepgram's SDK in a browser send it so), else from an "Authorization:
// Bearer <jwt>" header (Deepgram's SDK under Node sends its access token so),
// else from ?token= (the React component's contract).
func tokenFrom(r *http.Request) (string, error) {
	if offered := headerTokens(r.Header, "Sec-WebSocket-Protocol"); len(offered) > 0 {
		for i, p := range offered {
			if strings.EqualFold(p, "bearer") {
				if i+1 < len(offered) {
					return offered[i+1], nil
				}
				return "", nil
			}
		}
		return "", errNoBearer
	}
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "bearer") {
		return strings.TrimSpace(tok), nil
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", nil // route has answered 400 for a malformed query already
	}
	return q.Get("token"), nil
}

// headerTokens splits every value of a comma-separated header into trimmed,
// non-empty tokens.
func headerTokens(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

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

// addressIdentity is the identity of a client without a token, from its
// address: an IPv4 address as it is, an IPv6 one by its /64. One host is
// routinely given a whole /64 (SLAAC, privacy addresses, every cloud VM's
// range), so counting single IPv6 addresses would let it be 2^64 users to
// the per-user limits. An IPv4-mapped address counts as its IPv4 address.
func addressIdentity(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return "ip:" + ip
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is4() {
		return "ip:" + addr.String()
	}
	return "ip:" + netip.PrefixFrom(addr, 64).Masked().String()
}

// clientIP is the caller's address: from the header of the platform proxy
// named by TRUST_PROXY_HEADERS, else from the socket. A header is the
// client's own words unless that proxy writes it: Fly's proxy sets
// Fly-Client-IP, and Cloud Run's front end puts the address it saw last in
// X-Forwarded-For, after anything the client sent there. Believing any other
// header would let a client pick its rate-limit bucket and its address in
// the logs.
func clientIP(r *http.Request, trustProxy string) string {
	var fromProxy string
	switch trustProxy {
	case proxyFly:
		fromProxy = r.Header.Get("Fly-Client-IP")
	case proxyCloudRun:
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			fromProxy = last
		}
	}
	if ip := net.ParseIP(strings.TrimSpace(fromProxy)); ip != nil {
		return ip.String()
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
