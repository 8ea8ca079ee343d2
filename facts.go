package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
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

// identityKey is what Redis and Deepgram's usage reports know of an identity:
// HMAC-SHA256 keyed with a key derived from the Deepgram key (a secret the
// relay holds anyway, the same on every instance of a deployment), so that
// neither a sub nor an IP can be read back from it, nor guessed by hashing
// candidates, by anyone without that key. Deepgram has it: to Deepgram a
// usage tag is a plain hash of the identity, whose guesses it can test
// (every IPv4 address in about 16 CPU-minutes). 128 bits in hex.
func identityKey(hashKey []byte, identity string) string {
	mac := hmac.New(sha256.New, hashKey)
	mac.Write([]byte(identity))
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

// identityHashKey derives identityKey's key from the Deepgram key: not the key, and
// the key cannot be had back from it.
func identityHashKey(apiKey string) []byte {
	mac := hmac.New(sha256.New, []byte(apiKey))
	mac.Write([]byte("dgrelay user identity v1"))
	return mac.Sum(nil)
}
