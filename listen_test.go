package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/BurntSushi/toml"
	"github.com/coder/websocket"
	"github.com/sethvargo/go-envconfig"
)

// startRun starts the relay through run with env (plus a key, free ports
// and no upstream traffic) and returns its logs and the ports; the relay is
// stopped with SIGTERM when the test ends, and must exit 0.
func startRun(t *testing.T, env map[string]string) (logs *lockedBuffer, port, metricsPort string) {
	t.Helper()
	port, metricsPort = freePort(t), freePort(t)
	vars := map[string]string{"PORT": port, "METRICS_PORT": metricsPort, "DEEPGRAM_API_KEY": testAPIKey}
	for k, v := range env {
		vars[k] = v
	}
	logs = &lockedBuffer{}
	sig := make(chan os.Signal, 1)
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), envconfig.MapLookuper(vars), logs, sig) }()
	waitForLog(t, logs, "dgrelay started")
	t.Cleanup(func() {
		sig <- syscall.SIGTERM
		if code := <-done; code != 0 {
			t.Errorf("exit code %d:\n%s", code, logs)
		}
	})
	return logs, port, metricsPort
}

// nonLoopbackIP is an address of this machine that is not loopback: what
// another machine on the network would connect to. The test is skipped on a
// machine without one.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var v6 string
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() || n.IP.IsLinkLocalUnicast() {
			continue
		}
		if n.IP.To4() != nil {
			return n.IP.String()
		}
		if v6 == "" {
			v6 = n.IP.String()
		}
	}
	if v6 == "" {
		t.Skip("this machine has no address but loopback")
	}
	return v6
}

// reachable reports whether a TCP connection to host:port opens.
func reachable(host, port string) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// hasIPv6Loopback reports whether this machine can listen on [::1].
func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// TestListeners runs the relay and connects to both of its ports over
// loopback and over this machine's network address, as a neighbour would.
// Without authentication the public port is this machine's alone, unless
// LISTEN_HOST opens it; with authentication it is every interface's, as
// Cloud Run and Fly's proxy need. The metrics port is this machine's alone
// unless METRICS_HOST opens it, as fly.toml does. The start line says where
// each listens, and why.
func TestListeners(t *testing.T) {
	remote := nonLoopbackIP(t)
	var fly flyConfig
	if _, err := toml.DecodeFile("fly.toml", &fly); err != nil {
		t.Fatal(err)
	}
	// fly.toml's environment with the test's ports and a token secret, as
	// `fly secrets set` gives it.
	flyEnv := map[string]string{"JWT_SECRET": testJWTSecret}
	for k, v := range fly.Env {
		if k != "PORT" && k != "METRICS_PORT" {
			flyEnv[k] = v
		}
	}
	for _, tc := range []struct {
		name            string
		env             map[string]string
		public, metrics bool // reachable from the network
		why             string
	}{
		{name: "no authentication", env: map[string]string{"ALLOW_UNAUTHENTICATED": "true"},
			why: "no authentication: this machine only"},
		{name: "no authentication, LISTEN_HOST=0.0.0.0", env: map[string]string{"ALLOW_UNAUTHENTICATED": "true", "LISTEN_HOST": "0.0.0.0"},
			public: true, why: "LISTEN_HOST"},
		{name: "authentication", env: map[string]string{"JWT_SECRET": testJWTSecret},
			public: true, why: "authentication on: every interface"},
		{name: "authentication, LISTEN_HOST=localhost", env: map[string]string{"JWT_SECRET": testJWTSecret, "LISTEN_HOST": "localhost"},
			why: "LISTEN_HOST"},
		{name: "METRICS_HOST=::", env: map[string]string{"ALLOW_UNAUTHENTICATED": "true", "METRICS_HOST": "::"},
			metrics: true, why: "no authentication"},
		{name: "fly.toml", env: flyEnv, public: true, metrics: true, why: "authentication on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs, port, mport := startRun(t, tc.env)
			for _, p := range []struct {
				name, port string
				open       bool
			}{{"public", port, tc.public}, {"metrics", mport, tc.metrics}} {
				if !reachable("127.0.0.1", p.port) {
					t.Errorf("%s port: not reachable on 127.0.0.1", p.name)
				}
				if hasIPv6Loopback() && !reachable("::1", p.port) {
					t.Errorf("%s port: not reachable on [::1] (a browser tries localhost there first)", p.name)
				}
				if got := reachable(remote, p.port); got != p.open {
					t.Errorf("%s port reachable on %s (not loopback): %v, want %v", p.name, remote, got, p.open)
				}
			}
			start := grepLines(logs.String(), `"message":"dgrelay started"`)
			if !strings.Contains(start, `"listen":"`) || !strings.Contains(start, `"metrics_listen":"`) || !strings.Contains(start, `"listen_why":"`+tc.why) {
				t.Errorf("the start line does not say where and why it listens (want why %q):\n%s", tc.why, start)
			}
			if !tc.public && !strings.Contains(start, `"listen":"127.0.0.1:`+port) {
				t.Errorf("the start line does not name the loopback listener:\n%s", start)
			}
		})
	}
}

// TestListenHostValues: LISTEN_HOST and METRICS_HOST take an IP address or
// localhost; a name, which would resolve to one address of several, stops
// the start naming the variable.
func TestListenHostValues(t *testing.T) {
	for value, ok := range map[string]bool{
		"": true, "localhost": true, "0.0.0.0": true, "::": true, "[::]": true, "127.0.0.1": true, "::1": true, "10.1.2.3": true,
		"example.com": false, "0.0.0.0:8080": false, "*": false, "local host": false,
	} {
		for _, name := range []string{"LISTEN_HOST", "METRICS_HOST"} {
			err := checkListenHost(name, value)
			if (err == nil) != ok || (err != nil && !strings.HasPrefix(err.Error(), name+": ")) {
				t.Errorf("%s=%q: %v", name, value, err)
			}
		}
	}
	for value, want := range map[string]string{"localhost": "127.0.0.1 ::1", "0.0.0.0": "", "::": "", "[::1]": "::1", "10.1.2.3": "10.1.2.3"} {
		if got := strings.Join(listenHosts(value), " "); got != want {
			t.Errorf("listenHosts(%q) = %q, want %q", value, got, want)
		}
	}
}

// TestCloudBuildListeners: Cloud Run's deploy authenticates, so its public
// port listens on every interface (Cloud Run routes to 0.0.0.0:PORT), and it
// leaves METRICS_HOST at localhost: nothing outside the instance can reach a
// second port there, and a sidecar (Managed Prometheus) scrapes over
// localhost.
func TestCloudBuildListeners(t *testing.T) {
	raw, err := os.ReadFile("cloudbuild.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"LISTEN_HOST=", "METRICS_HOST=", "ALLOW_UNAUTHENTICATED="} {
		if strings.Contains(string(raw), name) {
			t.Errorf("cloudbuild.yaml sets %s", name)
		}
	}
	cfg := configFrom(t, nil)
	if hosts, _ := cfg.publicListen(true); strings.Join(hosts, "") != "" {
		t.Errorf("an authenticated relay listens on %v, want every interface", hosts)
	}
}

// TestIdleTimeoutWarning: an IDLE_TIMEOUT under the browser SDKs' 10 s
// KeepAlive period is warned about at start; 10 s and more, and 0 (never),
// are not.
func TestIdleTimeoutWarning(t *testing.T) {
	for value, warned := range map[string]bool{"5s": true, "9.9s": true, "10s": false, "60s": false, "0": false} {
		logs, _, _ := startRun(t, map[string]string{"ALLOW_UNAUTHENTICATED": "true", "METRICS_PORT": "0", "IDLE_TIMEOUT": value})
		line := grepLines(logs.String(), `"message":"IDLE_TIMEOUT=`)
		if (line != "") != warned || (warned && !strings.Contains(line, `"severity":"WARNING"`)) {
			t.Errorf("IDLE_TIMEOUT=%s: warning %q, want one: %v", value, line, warned)
		}
	}
}

// rebindingDial opens a WebSocket to the harness's relay as a browser would
// after resolving host's name to the relay's loopback address: the request's
// Host is host, its Origin origin. It returns the handshake's status.
func rebindingDial(t *testing.T, h *harness, host, origin string) int {
	t.Helper()
	addr := h.srv.Listener.Addr().String()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}}
	t.Cleanup(client.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+host+h.relay.cfg.ProxyPath, &websocket.DialOptions{
		HTTPClient: client, HTTPHeader: http.Header{"Origin": {origin}}})
	if err == nil {
		defer c.CloseNow()
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("%s: %v", host, err)
	}
	if resp.StatusCode == http.StatusForbidden {
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "to ALLOWED_ORIGINS") {
			t.Errorf("%s: the 403 does not say what to allow: %q", host, body)
		}
	}
	return resp.StatusCode
}

// TestOriginOwnHostOnlyWhenLocal: a page whose origin is the request's own
// Host passes only when that host is this machine (localhost, 127/8, [::1])
// or listed in ALLOWED_ORIGINS. A DNS-rebinding page (evil.example pointed
// at 127.0.0.1, so Host and Origin both say evil.example) and the try page
// of a deployed relay whose origin is not listed get 403, without a dial.
func TestOriginOwnHostOnlyWhenLocal(t *testing.T) {
	h := newHarness(t, map[string]string{"TRY_PAGE": "true"}, fakedeepgram.Options{})
	_, port, _ := net.SplitHostPort(h.srv.Listener.Addr().String())
	hostPort := func(host string) string { return net.JoinHostPort(host, port) }
	cases := map[string]int{
		hostPort("evil.example"):           http.StatusForbidden,
		hostPort("localhost.evil.example"): http.StatusForbidden,
		hostPort("127.0.0.1.nip.io"):       http.StatusForbidden,
		hostPort("relay.example.com"):      http.StatusForbidden,
		hostPort("localhost"):              http.StatusSwitchingProtocols,
		hostPort("LOCALHOST"):              http.StatusSwitchingProtocols,
		hostPort("127.0.0.1"):              http.StatusSwitchingProtocols,
		hostPort("127.0.0.2"):              http.StatusSwitchingProtocols,
		hostPort("::1"):                    http.StatusSwitchingProtocols,
		hostPort("::ffff:127.0.0.1"):       http.StatusSwitchingProtocols,
		"relay.example.com":                http.StatusForbidden, // the try page of a deployed relay, behind TLS
	}
	for host, want := range cases {
		before := len(h.fake.Handshakes())
		if got := rebindingDial(t, h, host, "http://"+host); got != want {
			t.Errorf("Host and Origin %s: %d, want %d", host, got, want)
		}
		if want == http.StatusForbidden && len(h.fake.Handshakes()) != before {
			t.Errorf("%s: refused, yet dialled Deepgram", host)
		}
	}

	// Listed, each passes: the rebinding name by host:port, the deployed
	// relay's try page by its host.
	listed := newHarness(t, map[string]string{"TRY_PAGE": "true", "ALLOWED_ORIGINS": hostPort("evil.example") + ",relay.example.com"}, fakedeepgram.Options{})
	_, lport, _ := net.SplitHostPort(listed.srv.Listener.Addr().String())
	for host, want := range map[string]int{
		net.JoinHostPort("evil.example", port):   http.StatusSwitchingProtocols,
		"relay.example.com":                      http.StatusSwitchingProtocols,
		net.JoinHostPort("other.example", lport): http.StatusForbidden,
	} {
		// The listed entry names the first harness's port; the origin is
		// what is matched, whatever port the socket is on.
		if got := rebindingDial(t, listed, host, "https://"+host); got != want {
			t.Errorf("ALLOWED_ORIGINS lists it; Host and Origin %s: %d, want %d", host, got, want)
		}
	}
}

// expectUserCapped opens a session from the address ip (as Fly's proxy
// reports it) and expects the per-user cap: close 4429 in-band, or HTTP 429
// before the upgrade for a repeated refusal.
func expectUserCapped(t *testing.T, h *harness, ip string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, h.wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Fly-Client-IP": {ip}}})
	if err != nil {
		if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("%s: %v, want the per-user cap", ip, err)
		}
		return
	}
	defer c.CloseNow()
	expectClose(t, c, 4429)
}

// admitFrom opens a session from the address ip and reads its Welcome.
func admitFrom(t *testing.T, h *harness, ip string) *websocket.Conn {
	t.Helper()
	c, err := h.tryDial("", &websocket.DialOptions{HTTPHeader: http.Header{"Fly-Client-IP": {ip}}})
	if err != nil {
		t.Fatalf("%s: %v", ip, err)
	}
	expectType(t, c, "Welcome")
	return c
}

// TestUnauthenticatedIPv6CountsBy64: without tokens a client is its
// address, and an IPv6 address counts by its /64, which one host is given
// whole: a second address of the same /64 meets the first's
// MAX_SESSIONS_PER_USER, another /64 does not, and IPv4 addresses count one
// by one.
func TestUnauthenticatedIPv6CountsBy64(t *testing.T) {
	h := newHarness(t, map[string]string{"MAX_SESSIONS_PER_USER": "1", "TRUST_PROXY_HEADERS": "fly"}, fakedeepgram.Options{})
	admitFrom(t, h, "2001:db8:1:2::1")
	expectUserCapped(t, h, "2001:db8:1:2:8000:aaaa:bbbb:9")
	admitFrom(t, h, "2001:db8:1:3::1")
	admitFrom(t, h, "198.51.100.1")
	admitFrom(t, h, "198.51.100.2")
	expectUserCapped(t, h, "::ffff:198.51.100.1")
	for ip, want := range map[string]string{
		"2001:db8:1:2:3:4:5:6": "ip:2001:db8:1:2::/64",
		"fe80::1%eth0":         "ip:fe80::/64",
		"::ffff:10.0.0.1":      "ip:10.0.0.1",
		"10.0.0.1":             "ip:10.0.0.1",
		"not-an-ip":            "ip:not-an-ip",
	} {
		if got := addressIdentity(ip); got != want {
			t.Errorf("addressIdentity(%q) = %q, want %q", ip, got, want)
		}
	}
}

// TestMetricsHostEmpty (issue 22's attacker's read): METRICS_HOST set but
// empty stops the start, instead of opening the metrics port (and pprof) on
// every interface.
func TestMetricsHostEmpty(t *testing.T) {
	_, err := loadConfig(context.Background(), envconfig.MapLookuper(map[string]string{
		"DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true", "METRICS_HOST": ""}))
	if err == nil || !strings.Contains(err.Error(), "METRICS_HOST: empty") {
		t.Fatalf("METRICS_HOST empty: %v", err)
	}
}
