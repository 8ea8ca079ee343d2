package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
)

// benchSession is an agent session of a relay configured by env, with its
// logs discarded, for measuring what one message costs the records.
func benchSession(b *testing.B, env map[string]string) *session {
	b.Helper()
	vars := map[string]string{"DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true"}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(vars))
	if err != nil {
		b.Fatal(err)
	}
	rl, err := newRelay(cfg, testAPIKey, nil, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rl.drain(0); rl.close() })
	s := &session{tools: &rl.tools, facts: &facts{service: "agent", identityKey: "130c0b4da5103030f810922145e920d1"}, id: "0123456789abcdef", started: time.Now()}
	s.upstreamText([]byte(`{"type":"Welcome","request_id":"fc553ec9-5874-49ca-a47c-b670d525a4b1"}`))
	return s
}

// BenchmarkRecords is what the records cost per text message, off and on:
// a Deepgram ConversationText on its way to the client, and a client's
// KeepAlive through the conversation log's filter. Audio never meets them.
//
//	go test -run XXX -bench Records -benchmem .
func BenchmarkRecords(b *testing.B) {
	hook := map[string]string{"CONVERSATION_WEBHOOK": "http://127.0.0.1:9/", "CONVERSATION_WEBHOOK_SECRET": testWebhookSecret}
	text := []byte(`{"type":"ConversationText","role":"assistant","content":"Sure, I can help with that. Which day would suit you best?"}`)
	for _, c := range []struct {
		name string
		env  map[string]string
	}{{"off", nil}, {"log", map[string]string{"CONVERSATION_LOG": "on"}}, {"webhook", hook}} {
		b.Run("down/"+c.name, func(b *testing.B) {
			s := benchSession(b, c.env)
			b.ReportAllocs()
			for b.Loop() {
				s.upstreamText(text)
			}
		})
	}
	b.Run("end/webhook", func(b *testing.B) {
		// A three-minute call's record: 20 turns, History and
		// ConversationText each way, built, scrubbed and signed.
		s := benchSession(b, hook)
		for i := 0; i < 20; i++ {
			for _, m := range []string{`{"type":"ConversationText","role":"user","content":"I would like to book a table for two on Friday."}`,
				`{"type":"History","role":"user","content":"I would like to book a table for two on Friday."}`,
				string(text), `{"type":"History","role":"assistant","content":"Sure, I can help with that. Which day would suit you best?"}`} {
				s.upstreamText([]byte(m))
			}
		}
		secret := []byte(testWebhookSecret)
		b.ReportAllocs()
		for b.Loop() {
			body, _ := s.recordBody(endClosed.outcome(""), 1000, 1000)
			signature(secret, time.Now(), body)
		}
	})
	b.Run("up/log", func(b *testing.B) {
		s := benchSession(b, map[string]string{"CONVERSATION_LOG": "on"})
		f := s.loggedClientText(nil)
		keepAlive := []byte(`{"type":"KeepAlive"}`)
		b.ReportAllocs()
		for b.Loop() {
			f(keepAlive)
		}
	})
}
