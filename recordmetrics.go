package main

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// The reasons dgrelay_conversation_webhook_dropped_total counts.
const (
	dropQueueFull = "queue_full" // the queue was at its bound
	dropGaveUp    = "gave_up"    // retried for webhookRetryFor without success
	dropRejected  = "rejected"   // the receiver answered a status that is not retried (4xx, 3xx)
	dropShutdown  = "shutdown"   // the relay stopped with it undelivered
	dropTooBig    = "too_big"    // the payload could not be made to fit its bound
)

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
