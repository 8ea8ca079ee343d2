package main

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// facts are what one upgrade request says of itself, read once by the
// relay's ServeHTTP and shared by its refusals and its session.
type facts struct {
	service   string   // agent or transcription
	endpoint  upstream // the Deepgram endpoint of service
	forwarded string   // the query passed on to Deepgram
	token     string   // the credential offered; "" when none
	remote    string   // the client's address
	trace     string   // the request's Cloud Trace name, for log lines; may be empty
	user      string   // the token's subject; "" when unauthenticated
	// identity is what the per-user limits count: "sub:" and the user, or
	// the address's (addressIdentity); identityKey is its hash, its name
	// in Redis and at Deepgram.
	identity, identityKey string
	usageTag              string // the tag naming the identity at Deepgram (USAGE_TAG=user), else ""
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
