package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The CONVERSATION_LOG values.
const (
	conversationLogOn  = "on"
	conversationLogOff = "off"
)

// minWebhookSecretBytes is the least CONVERSATION_WEBHOOK_SECRET: an HMAC
// key as long as its hash (SHA-256), as JWT_SECRET must be.
const minWebhookSecretBytes = 32

// records are what the relay keeps of conversations beyond its own session
// line: Deepgram's latencies (always, as metrics), and when the operator
// asks for them (personal data, off by default) a log line per non-audio
// message (CONVERSATION_LOG) and a signed summary with the transcript to a
// webhook at each session's end (CONVERSATION_WEBHOOK). Shared by every
// session, through its tools.
type records struct {
	// logMessages: CONVERSATION_LOG=on.
	logMessages bool
	// webhook is nil without CONVERSATION_WEBHOOK; sessions keep a
	// transcript only with one.
	webhook *webhook
	metrics *recordMetrics
}

// newRecords makes the records cfg asks for. The webhook's secret is in
// cfg by now, from the environment or Secret Manager (loadWebhookSecret).
func newRecords(cfg *Config, m *recordMetrics, log *slog.Logger) (*records, error) {
	r := &records{logMessages: cfg.ConversationLog == conversationLogOn, metrics: m}
	if cfg.ConversationWebhook == "" {
		return r, nil
	}
	if len(cfg.ConversationWebhookSecret) < minWebhookSecretBytes {
		return nil, fmt.Errorf("CONVERSATION_WEBHOOK_SECRET: %d bytes; at least %d are needed (openssl rand -hex 32)",
			len(cfg.ConversationWebhookSecret), minWebhookSecretBytes)
	}
	r.webhook = newWebhook(cfg.ConversationWebhook, []byte(cfg.ConversationWebhookSecret), m, log)
	return r, nil
}

// flushBy gives deliveries still queued at shutdown until t (see close).
func (r *records) flushBy(t time.Time) {
	if r.webhook != nil {
		r.webhook.flushBy(t)
	}
}

// close stops the webhook's deliveries: those still queued get until the
// time flushBy gave (none without one), then are dropped and counted.
func (r *records) close() {
	if r.webhook != nil {
		r.webhook.close()
	}
}

// loadWebhookSecret fills cfg.ConversationWebhookSecret from Secret Manager
// when CONVERSATION_WEBHOOK_SECRET_SECRET names a version, as
// loadJWTSecret does for JWT_SECRET.
func loadWebhookSecret(ctx context.Context, cfg *Config, secrets *secretReader) error {
	if cfg.ConversationWebhookSecretSecret == "" {
		return nil
	}
	secret, err := secrets.access(ctx, cfg.ConversationWebhookSecretSecret)
	if err != nil {
		return fmt.Errorf("CONVERSATION_WEBHOOK_SECRET_SECRET: %w", err)
	}
	cfg.ConversationWebhookSecret = secret
	return nil
}

// webhookHost is where deliveries go, for the start line: the host alone
// (the path or query may hold a receiver's token), or "off".
func webhookHost(cfg *Config) string {
	if cfg.ConversationWebhook == "" {
		return "off"
	}
	u, _ := url.Parse(cfg.ConversationWebhook)
	return u.Host
}

// recordMetrics are the records' collectors, registered with the relay's
// (newMetrics).
type recordMetrics struct {
	// latency is Deepgram's reported latency per turn, by report and stage.
	latency *prometheus.HistogramVec
	// textTime is the relay's own time on each of Deepgram's text messages.
	textTime prometheus.Observer
	// delivered, dropped, retries and queued are the webhook's.
	delivered prometheus.Counter
	dropped   *prometheus.CounterVec
	retries   prometheus.Counter
	queued    prometheus.Gauge
	// transcriptDropped counts transcript entries dropped, oldest first,
	// to keep a session's transcript within its bound.
	transcriptDropped prometheus.Counter
}

// The reasons dgrelay_conversation_webhook_dropped_total counts.
const (
	dropQueueFull = "queue_full" // the queue was at its bound
	dropGaveUp    = "gave_up"    // retried for webhookRetryFor without success
	dropRejected  = "rejected"   // the receiver answered a status that is not retried (4xx, 3xx)
	dropShutdown  = "shutdown"   // the relay stopped with it undelivered
	dropTooBig    = "too_big"    // the payload could not be made to fit its bound
)

func newRecordMetrics(reg *prometheus.Registry) *recordMetrics {
	m := &recordMetrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dgrelay_deepgram_latency_seconds", Help: "Deepgram's own latency per agent turn, as it reports it (LatencyReport, AgentStartedSpeaking), by report and stage.",
			Buckets: []float64{.05, .1, .2, .3, .4, .5, .75, 1, 1.5, 2, 3, 5, 8, 13},
		}, []string{"report", "stage"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dgrelay_conversation_webhook_delivered_total", Help: "Session records the webhook accepted (2xx).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dgrelay_conversation_webhook_dropped_total", Help: "Session records never delivered, by reason (" +
				strings.Join([]string{dropQueueFull, dropGaveUp, dropRejected, dropShutdown, dropTooBig}, ", ") + ").",
		}, []string{"reason"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dgrelay_conversation_webhook_retries_total", Help: "Webhook deliveries tried again after a failure.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dgrelay_conversation_webhook_queued", Help: "Session records waiting for the webhook, being sent or waiting to be tried again.",
		}),
		transcriptDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dgrelay_conversation_transcript_dropped_total", Help: "Transcript entries dropped, oldest first, to keep a session's record within its bound.",
		}),
	}
	text := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "dgrelay_upstream_text_seconds", Help: "The relay's own time on each of Deepgram's text messages on its way to the client: the scrub, reading its kind, the records.",
		Buckets: []float64{2e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3},
	})
	m.textTime = text
	for _, r := range []string{dropQueueFull, dropGaveUp, dropRejected, dropShutdown, dropTooBig} {
		m.dropped.WithLabelValues(r) // shown at 0 before the first
	}
	reg.MustRegister(m.latency, text, m.delivered, m.dropped, m.retries, m.queued, m.transcriptDropped)
	return m
}
