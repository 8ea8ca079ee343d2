package main

import (
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// benchHookSecret signs the records dgrelay-webhook sends the bench's
// receiver: not a secret.
const benchHookSecret = "bench-webhook-secret-not-a-secret-0123456789"

// recordsEnv are the dgrelay-log and dgrelay-webhook paths' settings: the
// conversation records on (docs/conversation-records.md), to measure what
// they cost beside the dgrelay path, which has them off.
var recordsEnv = map[string][]string{
	"dgrelay-log": {"CONVERSATION_LOG=on"},
}

// hookReceiver is a webhook receiver on 127.0.0.1 that takes every record
// at once (204), as a receiver should, and counts them.
type hookReceiver struct {
	url      string
	received atomic.Int64
	srv      *http.Server
}

func startHookReceiver() (*hookReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &hookReceiver{url: "http://" + ln.Addr().String() + "/records"}
	r.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		r.received.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// webhookEnv is dgrelay-webhook's settings, toward r.
func (r *hookReceiver) webhookEnv() []string {
	return []string{"CONVERSATION_WEBHOOK=" + r.url, "CONVERSATION_WEBHOOK_SECRET=" + benchHookSecret}
}
