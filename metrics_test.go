package main

import (
	"fmt"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// TestMetrics drives sessions that end every way and reads the registry as
// Prometheus would.
func TestMetrics(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"ALLOWED_ORIGINS": "app.example.com", "IDLE_TIMEOUT": "4s"}), fakedeepgram.Options{EchoAudio: true})
	m := httptest.NewServer(h.relay.metricsServer().Handler)
	defer m.Close()
	tok := userToken(t, "metrics-user-sub")

	// A long session's bytes show while it runs: the watchdog flushes them.
	c := h.agentSession("service=agent&token=" + tok)
	write(t, c, websocket.MessageBinary, make([]byte, 640))
	read(t, c)
	up := fmt.Sprintf(`dgrelay_bytes_total{direction="up"} %d`, len(minimalSettings)+640)
	waitFor(t, func() bool {
		return strings.Contains(scrape(t, m.URL+"/metrics"), up)
	})
	c.Close(4000, "done")
	h.upstreamClosed()

	expectRefused(t, h, "token="+hs256(t, testJWTSecret, claims{sub: "x", exp: -time.Hour}), nil, 4401, "token expired")

	h.fake.SetOptions(fakedeepgram.Options{APIKey: "not-the-relay-key"})
	c = h.dial("service=transcription&token=" + tok)
	expectType(t, c, "Error")
	expectClose(t, c, websocket.StatusBadGateway)
	h.relay.drain(time.Second)

	body := scrape(t, m.URL+"/metrics")
	for _, want := range []string{
		`dgrelay_sessions_total{outcome="closed",service="agent"} 1`,
		`dgrelay_sessions_total{outcome="upstream_failed",service="transcription"} 1`,
		`dgrelay_sessions_active{service="agent"} 0`,
		`dgrelay_close_codes_total{code="4xxx",side="client"} 1`,
		`dgrelay_close_codes_total{code="4xxx",side="upstream"} 1`,
		`dgrelay_close_codes_total{code="1014",side="client"} 1`,
		up,
		`dgrelay_messages_total{direction="down"} 3`, // Welcome, SettingsApplied, the echo
		`dgrelay_upstream_failures_total{code="UPSTREAM_AUTH"} 1`,
		`dgrelay_auth_failures_total{reason="expired"} 1`,
		`dgrelay_upstream_dial_seconds_count{result="ok",service="agent"} 1`,
		`dgrelay_upstream_dial_seconds_count{result="error",service="transcription"} 1`,
		`dgrelay_session_duration_seconds_count{service="agent"} 1`,
		`dgrelay_drains_total 1`,
		`dgrelay_build_info{version="dev"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, secret := range []string{testAPIKey, tok, "metrics-user-sub", testJWTSecret} {
		if strings.Contains(body, secret) {
			t.Errorf("metrics hold a secret or a user id: %.20s...", secret)
		}
	}
}

func TestCodeLabel(t *testing.T) {
	for code, want := range map[websocket.StatusCode]string{0: "0", 1000: "1000", 1014: "1014", 4401: "4401", 4429: "4429", 4008: "4xxx", 3001: "3xxx", 1016: "other"} {
		if got := codeLabel(code); got != want {
			t.Errorf("%d: %s, want %s", code, got, want)
		}
	}
}

// TestPprofOnlyWhenEnabled: the profiler is on the metrics port, and only
// when asked for.
func TestPprofOnlyWhenEnabled(t *testing.T) {
	for _, enabled := range []string{"false", "true"} {
		h := newHarness(t, map[string]string{"ENABLE_PPROF": enabled}, fakedeepgram.Options{})
		m := httptest.NewServer(h.relay.metricsServer().Handler)
		resp := get(t, m.URL+"/debug/pprof/", nil)
		m.Close()
		if want := map[string]int{"false": 404, "true": 200}[enabled]; resp.StatusCode != want {
			t.Errorf("ENABLE_PPROF=%s: /debug/pprof/ answered %d", enabled, resp.StatusCode)
		}
		if resp := get(t, h.srv.URL+"/debug/pprof/", nil); resp.StatusCode != 404 {
			t.Errorf("the public port serves pprof")
		}
	}
}

// TestReadmeMetricsTable: every dgrelay_ metric the registry holds is in the
// metrics table of docs/operations.md.
func TestReadmeMetricsTable(t *testing.T) {
	section := docSection(t, "docs/operations.md", "Metrics")
	descs := make(chan *prometheus.Desc)
	go func() {
		newMetrics("dev").registry.Describe(descs)
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	seen := 0
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil || !strings.HasPrefix(m[1], "dgrelay_") {
			continue
		}
		seen++
		if !strings.Contains(section, "`"+m[1]+"`") {
			t.Errorf("%s is not in docs/operations.md's metrics table", m[1])
		}
	}
	if seen < 10 {
		t.Fatalf("only %d dgrelay_ metrics described", seen)
	}
}
