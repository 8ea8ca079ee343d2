package main

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the relay's Prometheus collectors, on a registry of its own
// (shared by every session, like the session set, the user limits and the
// text budget). Labels are fixed
// sets: service, direction, side, reason, cause, close code. No user id,
// token or key is ever a label value.
type metrics struct {
	registry *prometheus.Registry

	sessionsActive   *prometheus.GaugeVec
	sessionsTotal    *prometheus.CounterVec
	sessionDuration  *prometheus.HistogramVec
	closeCodes       *prometheus.CounterVec
	bytes            *prometheus.CounterVec
	messages         *prometheus.CounterVec
	dialDuration     *prometheus.HistogramVec
	dialRetries      *prometheus.CounterVec
	upstreamErrors   *prometheus.CounterVec
	authFailures     *prometheus.CounterVec
	refusals         *prometheus.CounterVec
	refusalsRepeated *prometheus.CounterVec
	upstreamDown     *prometheus.GaugeVec
	policyViolations *prometheus.CounterVec
	drains           prometheus.Counter
	draining         prometheus.Gauge
	redisAdmission   *prometheus.HistogramVec
	redisErrors      *prometheus.CounterVec
	redisFallback    prometheus.Gauge
	upstreamMoves    *prometheus.CounterVec
	upstreamMoveGap  prometheus.Histogram

	// up and down are the traffic counters' two series, looked up once:
	// every live session adds to them every second.
	up, down directionCounters

	// recordMetrics are the conversation records' (records.go).
	recordMetrics *recordMetrics
}

// directionCounters are one direction's series of the traffic counters.
type directionCounters struct {
	messages, bytes prometheus.Counter
}

func newMetrics(version string) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		sessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dgrelay_sessions_active", Help: "Sessions relaying now.",
		}, []string{"service"}),
		sessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_sessions_total", Help: "Sessions ended, by how they ended (" + strings.Join(sessionOutcomes(), ", ") + ").",
		}, []string{"service", "outcome"}),
		sessionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dgrelay_session_duration_seconds", Help: "How long relayed sessions lasted.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200},
		}, []string{"service"}),
		closeCodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_close_codes_total", Help: "Close codes of ended sessions, on the client's and on Deepgram's connection (0: dropped without a close frame).",
		}, []string{"side", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_bytes_total", Help: "Message bytes relayed, by direction (up: client to Deepgram).",
		}, []string{"direction"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_messages_total", Help: "Messages relayed, by direction (up: client to Deepgram).",
		}, []string{"direction"}),
		dialDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dgrelay_upstream_dial_seconds", Help: "Time to open the Deepgram WebSocket, by result (ok, error, cancelled).",
			Buckets: []float64{.025, .05, .1, .2, .4, .8, 1.6, 3.2, 6.4, 10},
		}, []string{"service", "result"}),
		dialRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_upstream_dial_retries_total", Help: "Deepgram dials tried again, by what the failed try met (connect, http_502, http_503, http_504).",
		}, []string{"service", "cause"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_upstream_failures_total", Help: "Sessions that could not reach Deepgram, by the Error code sent to the client.",
		}, []string{"code"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_auth_failures_total", Help: "Tokens refused, by cause.",
		}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_refusals_total", Help: "Sessions refused by a limit or check (" + strings.Join(refusalLabels(), ", ") + ").",
		}, []string{"reason"}),
		refusalsRepeated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_refusals_repeated_total", Help: "Refusals answered before the upgrade (HTTP 401, 429, 503 with Retry-After) because the same identity met the same refusal within REFUSAL_WINDOW, by reason (" + strings.Join(repeatLabels(), ", ") + ").",
		}, []string{"reason"}),
		upstreamDown: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dgrelay_upstream_down", Help: "1 while dials to Deepgram's service are held after failing in a row: sessions are refused with UPSTREAM_UNAVAILABLE, one at a time probes.",
		}, []string{"service"}),
		policyViolations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_settings_policy_violations_total", Help: "Client fields the Settings policy stripped, or messages it refused, by action.",
		}, []string{"action"}),
		drains: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dgrelay_drains_total", Help: "Shutdown drains started.",
		}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dgrelay_draining", Help: "1 while this instance drains after a shutdown signal.",
		}),
		redisAdmission: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dgrelay_redis_admission_seconds", Help: "Time Redis took to admit or refuse a request, by result (ok, error: no answer within REDIS_TIMEOUT).",
			Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2},
		}, []string{"result"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_redis_errors_total", Help: "Redis calls that failed or timed out, by operation (admit, renew, release).",
		}, []string{"op"}),
		redisFallback: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dgrelay_redis_fallback", Help: "1 while Redis cannot be reached: per-user limits count on this instance only (REDIS_FAILURE=local) or new sessions are refused (refuse).",
		}),
		upstreamMoves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_upstream_moves_total", Help: "Agent sessions carried to a new Deepgram connection, by why (session_length, upstream_error, dropped) and outcome (ok, failed, too_many, cancelled: the session ended during the move).",
		}, []string{"reason", "outcome"}),
		upstreamMoveGap: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "dgrelay_upstream_move_seconds", Help: "How long a move held the client's messages: from the old connection's end to the new one's SettingsApplied.",
			Buckets: []float64{.01, .025, .05, .1, .2, .4, .8, 1.6, 3.2, 6.4, 10},
		}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dgrelay_build_info", Help: "The running build.", ConstLabels: prometheus.Labels{"version": version},
	})
	for dir, c := range map[string]*directionCounters{"up": &m.up, "down": &m.down} {
		c.messages, c.bytes = m.messages.WithLabelValues(dir), m.bytes.WithLabelValues(dir)
	}
	build.Set(1)
	m.recordMetrics = newRecordMetrics(m.registry)
	for _, service := range []string{"agent", "transcription"} {
		m.upstreamDown.WithLabelValues(service).Set(0) // shown before any outage
	}
	m.registry.MustRegister(m.sessionsActive, m.sessionsTotal, m.sessionDuration, m.closeCodes, m.bytes, m.messages,
		m.dialDuration, m.dialRetries, m.upstreamErrors, m.authFailures, m.refusals, m.refusalsRepeated, m.upstreamDown, m.policyViolations, m.drains, m.draining,
		m.redisAdmission, m.redisErrors, m.redisFallback, m.upstreamMoves, m.upstreamMoveGap, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// handler serves the registry in the Prometheus text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// codeLabel keeps the close-code label a small set: the protocol's codes and
// dgrelay's own by number, other application codes by range.
func codeLabel(code websocket.StatusCode) string {
	switch {
	case code == 0:
		return "0"
	case code >= 1000 && code <= 1015, code == 4401, code == 4429:
		return strconv.Itoa(int(code))
	case code >= 3000 && code <= 3999:
		return "3xxx"
	case code >= 4000 && code <= 4999:
		return "4xxx"
	}
	return "other"
}

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"
