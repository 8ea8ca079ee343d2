package main

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
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

// read is what r says of where it comes from: the client's address and
// the trace, the first facts of every answer, read once.
func (rl *relay) read(r *http.Request) *facts {
	return &facts{remote: clientIP(r, rl.cfg.TrustProxyHeaders), trace: cloudTrace(r, rl.cfg.GoogleCloudProject)}
}

// check reads what an upgrade request says of itself into f (a WebSocket
// handshake the library would accept, the service, the origin, where the
// token is) and returns the answer before the upgrade of the first thing
// wrong, or nil. It writes nothing.
func (rl *relay) check(r *http.Request, f *facts) *refusal {
	if !isWebSocketUpgrade(r) {
		return refusedBefore(httpNotWebSocket, "this endpoint speaks WebSocket only")
	}
	if msg := badHandshake(r); msg != "" {
		return refusedBefore(httpBadHandshake, msg)
	}
	byPath, _ := pathService(rl.cfg.ProxyPath, r.URL.Path)
	service, forwarded, rerr := routeAt(byPath, r.URL.RawQuery)
	if rerr != nil {
		return refusedBefore(httpBadRoute, rerr.msg)
	}
	f.service, f.endpoint, f.forwarded = service, rl.agent, forwarded
	if service == "transcription" {
		f.endpoint = rl.listen
	}
	if !rl.origins.allowed(r) {
		// The origin is logged (bounded) with the entry that would allow
		// it, so that a missing ALLOWED_ORIGINS entry is easy to fix; it is
		// a page's address, not a secret. A browser does not show the body.
		origin := r.Header.Get("Origin")
		fix := rl.scrub.CleanTo(originFix(origin), errorDetailLimit)
		rf := refusedBefore(httpOrigin, "origin not allowed: "+fix)
		rf.logged = []any{"origin", rl.redact(originForLog(origin)), "fix", fix}
		// An address's refused origins are logged once a window: a page
		// retrying, or a client making up origins, writes one line (the
		// refusal summary counts the rest).
		rf.who = addressIdentity(f.remote)
		return rf
	}
	token, err := tokenFrom(r)
	if err != nil {
		return refusedBefore(httpNoBearer, err.Error())
	}
	f.token = token
	return nil
}

// identify names who f is: the token's user, or the address when tokens are
// off, with the identity's hash and usage tag. It returns the token's
// failure when the token is refused.
func (rl *relay) identify(f *facts) *authFailure {
	if rl.auth.enabled() {
		sub, fail := rl.auth.verify(f.token)
		if fail != nil {
			return fail
		}
		f.user, f.identity = sub, "sub:"+sub
		f.token = "" // verified: it is not kept
	} else {
		f.identity = addressIdentity(f.remote)
	}
	f.identityKey = identityKey(rl.identityHashKey, f.identity)
	if f.usageTag = usageTagOf(rl.cfg.UsageTag, f.identityKey); f.usageTag != "" && f.service == "transcription" {
		f.forwarded = taggedQuery(f.forwarded, f.usageTag)
	}
	return nil
}

// credentialHash names a refused token for the refusal memory (a token is
// never stored): with its address, it is who was refused, so that another
// user at the same address, or this one with a fresh token, is not
// affected.
func (rl *relay) credentialHash(f *facts) string {
	return identityKey(rl.identityHashKey, "token\x00"+f.token)[:12]
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
