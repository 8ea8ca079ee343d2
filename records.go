package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// minWebhookSecretBytes is the least CONVERSATION_WEBHOOK_SECRET: an HMAC
// key as long as its hash (SHA-256), as JWT_SECRET must be.
const minWebhookSecretBytes = 32

// recordKeeper keeps what the relay records of conversations beyond its own
// session line: Deepgram's latencies (always, as metrics), and when the
// operator asks for them (personal data, off by default) a log line per
// non-audio message (CONVERSATION_LOG) and a signed summary with the
// transcript to a webhook at each session's end (CONVERSATION_WEBHOOK).
// Shared by every session, through its tools.
type recordKeeper struct {
	// logMessages: CONVERSATION_LOG=on.
	logMessages bool
	// webhook is nil without CONVERSATION_WEBHOOK; sessions keep a
	// transcript only with one.
	webhook *webhook
	metrics *recordMetrics
}

// newRecords makes the records cfg asks for. The webhook's secret is in
// cfg by now, from the environment or Secret Manager (loadWebhookSecret).
func newRecords(cfg *Config, m *recordMetrics, log *slog.Logger) (*recordKeeper, error) {
	r := &recordKeeper{logMessages: cfg.ConversationLog == conversationLogOn, metrics: m}
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
func (r *recordKeeper) flushBy(t time.Time) {
	if r.webhook != nil {
		r.webhook.flushBy(t)
	}
}

// close stops the webhook's deliveries: those still queued get until the
// time flushBy gave (none without one), then are dropped and counted.
func (r *recordKeeper) close() {
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
