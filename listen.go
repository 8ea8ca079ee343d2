package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
)

// Where the relay listens. A relay without authentication spends its key
// for anyone who reaches it, so it listens on this machine alone unless
// LISTEN_HOST says otherwise; an authenticated one listens on every
// interface, as Cloud Run and Fly's proxy need. The metrics port carries no
// user traffic and tells a stranger how busy the relay is (and with
// ENABLE_PPROF serves profiles), so it listens on this machine alone unless
// METRICS_HOST opens it, as fly.toml does for Fly's scrape.

// hostLocal is the LISTEN_HOST and METRICS_HOST value for both loopback
// addresses. It is not looked up: a resolver or a hosts file could map
// "localhost" anywhere, and a lookup gives one address where browsers try
// both (Chrome tries [::1] first).
const hostLocal = "localhost"

// hostsAll is what listening on every interface means to net.Listen: Go
// makes "tcp" on the unspecified address one dual-stack socket (IPv4 and
// IPv6), so 0.0.0.0 and :: are the same listener.
var hostsAll = []string{""}

// loopbackHosts are the addresses hostLocal stands for.
var loopbackHosts = []string{"127.0.0.1", "::1"}

// checkListenHost checks a LISTEN_HOST or METRICS_HOST value: empty (the
// default rule), localhost, or an IP address (brackets allowed around an IPv6
// one). A name would be resolved to one address of perhaps several, so it
// is refused rather than guessed at.
func checkListenHost(name, value string) error {
	if value == "" || strings.EqualFold(value, hostLocal) {
		return nil
	}
	if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(value, "["), "]")); err != nil {
		return fmt.Errorf("%s: %q is not an IP address or localhost (0.0.0.0 or :: for every interface, localhost for this machine alone)", name, value)
	}
	return nil
}

// listenHosts turns a checked LISTEN_HOST or METRICS_HOST into the hosts
// to listen on: both loopback addresses for localhost, the wildcard for an
// unspecified address, else the one address.
func listenHosts(value string) []string {
	if strings.EqualFold(value, hostLocal) {
		return loopbackHosts
	}
	addr, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(value, "["), "]"))
	if err != nil || addr.IsUnspecified() {
		return hostsAll
	}
	return []string{addr.String()}
}

// listenOn opens port on every one of hosts. On a machine without IPv6 the
// loopback pair's [::1] cannot be had, which is no reason not to start:
// 127.0.0.1 serves alone then. Any other failure closes what was opened.
func listenOn(hosts []string, port int) ([]net.Listener, error) {
	var lns []net.Listener
	for _, h := range hosts {
		ln, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
		if err != nil {
			if h == "::1" && len(lns) > 0 && noIPv6(err) {
				continue
			}
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// noIPv6 reports whether err says the machine has no IPv6 (or no ::1).
func noIPv6(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT)
}

// listenAddrs is the listeners' addresses for the start line.
func listenAddrs(lns []net.Listener) string {
	addrs := make([]string, len(lns))
	for i, ln := range lns {
		addrs[i] = ln.Addr().String()
	}
	return strings.Join(addrs, " ")
}
