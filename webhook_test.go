package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-envconfig"
)

// TestDeadWebhookDelaysNothing: a receiver that takes connections and never
// answers holds neither a session's end nor the shutdown: the session's line
// comes at once, and the built relay, SIGTERMed with one call live, exits
// within the drain's own bound (DRAIN_TIMEOUT and stopTail after it)
// although each POST could wait 10 s; the records it could not deliver are
// counted.
func TestDeadWebhookDelaysNothing(t *testing.T) {
	r := newReceiver(t)
	r.hold = make(chan struct{})
	defer close(r.hold)

	h := newHarness(t, webhookEnv(r), fakedeepgram.Options{})
	c := h.agentSession("service=agent")
	closed := time.Now()
	c.Close(websocket.StatusNormalClosure, "")
	h.settled()
	if took := time.Since(closed); took > time.Second {
		t.Errorf("the session took %s to end with a dead webhook", took)
	}
	waitForLog(t, h.logs, `"message":"session end"`)

	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	p := startProcess(t, fake, "DRAIN_TIMEOUT=1s", "CONVERSATION_WEBHOOK="+r.srv.URL, "CONVERSATION_WEBHOOK_SECRET="+testWebhookSecret)
	ended := p.dial(t)
	write(t, ended, websocket.MessageText, []byte(minimalSettings))
	expectType(t, ended, "SettingsApplied")
	ended.Close(websocket.StatusNormalClosure, "")
	waitForLog(t, p.logs, `"message":"session end"`)
	straggler := p.dial(t)
	write(t, straggler, websocket.MessageText, []byte(minimalSettings))
	expectType(t, straggler, "SettingsApplied")

	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectClose(t, straggler, websocket.StatusServiceRestart)
	if code := p.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.logs.String())
	}
	// 1 s of drain, then stopTail for the closes, requests and records: the
	// webhook adds nothing to the shutdown's bound.
	if took := time.Since(signalled); took > time.Second+stopTail+500*time.Millisecond {
		t.Errorf("exit %s after SIGTERM", took)
	}
	if n := strings.Count(p.logs.String(), `"reason":"shutdown"`); n != 2 {
		t.Errorf("%d records dropped at shutdown, want 2:\n%s", n, p.logs.String())
	}
}

// TestWebhookQueueBound: past webhookQueueLen records waiting, more are
// dropped and counted (queue_full); at close those waiting are dropped and
// counted too (shutdown), and no goroutine is left (TestMain's goleak).
func TestWebhookQueueBound(t *testing.T) {
	r := newReceiver(t)
	r.hold = make(chan struct{})
	defer close(r.hold)
	reg := prometheus.NewRegistry()
	m := newRecordMetrics(reg)
	w := newWebhook(r.srv.URL, []byte(testWebhookSecret), m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for i := 0; i < webhookQueueLen+3; i++ {
		w.send("s", "one", []byte(`{}`))
	}
	if got := droppedFor(t, reg, dropQueueFull); got != 3 {
		t.Errorf("queue_full %v, want 3", got)
	}
	w.flushBy(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	w.close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("close took %s", took)
	}
	if got := droppedFor(t, reg, dropShutdown); got != webhookQueueLen {
		t.Errorf("shutdown drops %v, want %d", got, webhookQueueLen)
	}
	w.send("late", "one", []byte(`{}`))
	if got := droppedFor(t, reg, dropShutdown); got != webhookQueueLen+1 {
		t.Errorf("a record after close: shutdown drops %v", got)
	}
}

// heldWebhook is a webhook, with its metrics' registry, toward a receiver
// that holds every POST until release (which the test's end calls too).
func heldWebhook(t *testing.T) (*receiver, *webhook, *prometheus.Registry, func()) {
	r := newReceiver(t)
	r.hold = make(chan struct{})
	release := sync.OnceFunc(func() { close(r.hold) })
	reg := prometheus.NewRegistry()
	w := newWebhook(r.srv.URL, []byte(testWebhookSecret), newRecordMetrics(reg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() {
		release()
		w.close()
	})
	return r, w, reg, release
}

// TestWebhookQueueShare: against a receiver that has stopped answering, a
// full queue takes another user's record by pushing out the newest of the
// user who holds the most, and refuses that user's next one; once the
// receiver is back, the other user's records arrive and the pushed-out ones
// do not.
func TestWebhookQueueShare(t *testing.T) {
	r, w, reg, release := heldWebhook(t)
	for i := range webhookQueueLen {
		w.send(fmt.Sprintf("a-%d", i), "a", []byte(`{}`))
	}
	w.send("b-0", "b", []byte(`{}`))
	w.send("b-1", "b", []byte(`{}`))
	w.send("a-late", "a", []byte(`{}`)) // a holds the most: its own is refused
	if got := droppedFor(t, reg, dropQueueFull); got != 3 {
		t.Errorf("queue_full %v, want 3 (two of a's pushed out, a's late one)", got)
	}
	release()
	deadline := time.Now().Add(20 * time.Second)
	for len(r.deliveries()) < webhookQueueLen && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := map[string]bool{}
	for _, d := range r.deliveries() {
		got[d.header.Get(deliveryHeader)] = true
	}
	if len(got) != webhookQueueLen {
		t.Fatalf("%d records delivered, want %d", len(got), webhookQueueLen)
	}
	for _, id := range []string{"b-0", "b-1"} {
		if !got[id] {
			t.Errorf("%s, the other user's record, was not delivered", id)
		}
	}
	for _, id := range []string{fmt.Sprintf("a-%d", webhookQueueLen-1), fmt.Sprintf("a-%d", webhookQueueLen-2), "a-late"} {
		if got[id] {
			t.Errorf("%s was delivered: it should have made room", id)
		}
	}
}

// TestWebhookQueueShareBytes: when the byte bound is the one met, the
// identity holding the most bytes gives up its newest record for another's
// small one, even when every identity holds one record: a few hundred
// accounts with one large record each cannot shut everyone else out.
func TestWebhookQueueShareBytes(t *testing.T) {
	old := webhookQueueBytes
	webhookQueueBytes = 64 << 10
	t.Cleanup(func() { webhookQueueBytes = old })
	r, w, reg, release := heldWebhook(t)
	big := bytes.Repeat([]byte("x"), 4<<10)
	for i := range 20 { // 16 fit; the last 4 are refused: each holder holds as much
		w.send(fmt.Sprintf("big-%d", i), fmt.Sprintf("acct-%d", i), big)
	}
	if got := droppedFor(t, reg, dropQueueFull); got != 4 {
		t.Errorf("queue_full %v, want 4", got)
	}
	w.send("small", "late", []byte(`{}`))
	if got := droppedFor(t, reg, dropQueueFull); got != 5 {
		t.Errorf("queue_full %v after the small record, want 5 (one large one pushed out)", got)
	}
	release()
	deadline := time.Now().Add(20 * time.Second)
	for len(r.deliveries()) < 16 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := map[string]bool{}
	for _, d := range r.deliveries() {
		got[d.header.Get(deliveryHeader)] = true
	}
	if !got["small"] || len(got) != 16 {
		t.Errorf("delivered %d records, the small one: %v; want 16 with it", len(got), got["small"])
	}
}

// TestWebhookShutdownCountsEveryRecord: records waiting to be tried again
// when the relay stops, against a receiver that fails at once, are each
// tried once more and counted dropped (shutdown) when that fails too.
func TestWebhookShutdownCountsEveryRecord(t *testing.T) {
	statuses := make([]int, 100)
	for i := range statuses {
		statuses[i] = http.StatusServiceUnavailable
	}
	r := newReceiver(t, statuses...)
	reg := prometheus.NewRegistry()
	w := newWebhook(r.srv.URL, []byte(testWebhookSecret), newRecordMetrics(reg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	for i := range 10 {
		w.send(fmt.Sprintf("s-%d", i), fmt.Sprintf("u-%d", i), []byte(`{}`))
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.deliveries()) < 10 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	w.flushBy(time.Now().Add(time.Second))
	w.close()
	if got := droppedFor(t, reg, dropShutdown); got != 10 {
		t.Errorf("shutdown drops %v, want 10 (%d tries seen)", got, len(r.deliveries()))
	}
}

// droppedFor is dgrelay_conversation_webhook_dropped_total{reason} in reg.
func droppedFor(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "dgrelay_conversation_webhook_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestWebhookConfig: the webhook's URL is https, or http to this machine;
// it holds no credentials; a secret is required and long enough.
func TestWebhookConfig(t *testing.T) {
	base := map[string]string{"DEEPGRAM_API_KEY": "k", "ALLOW_UNAUTHENTICATED": "true", "CONVERSATION_WEBHOOK_SECRET": testWebhookSecret}
	for value, want := range map[string]string{
		"http://hooks.example.com/x":        "http:// is allowed only to this machine",
		"http://10.0.0.1/x":                 "http:// is allowed only to this machine",
		"ftp://hooks.example.com/":          `scheme "ftp"`,
		"https://user:pw@hooks.example.com": "credentials in the URL",
		"https:///path":                     "no host",
		"https://hooks.example.com/#frag":   "fragment",
		"https://hooks.example.com/x":       "",
		"http://127.0.0.1:9/x":              "",
		"http://[::1]:9/x":                  "",
		"http://localhost:9/x":              "",
	} {
		env := map[string]string{"CONVERSATION_WEBHOOK": value}
		for k, v := range base {
			env[k] = v
		}
		_, err := loadConfig(context.Background(), envconfig.MapLookuper(env))
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", value, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want %q", value, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "pw@") {
			t.Errorf("the error quotes the URL: %v", err)
		}
	}
	for name, env := range map[string]map[string]string{
		"no secret":  {"CONVERSATION_WEBHOOK": "https://h.example.com"},
		"both":       {"CONVERSATION_WEBHOOK_SECRET": "x", "CONVERSATION_WEBHOOK_SECRET_SECRET": "projects/p/secrets/s/versions/1"},
		"log is yes": {"CONVERSATION_LOG": "yes"},
	} {
		env["DEEPGRAM_API_KEY"], env["ALLOW_UNAUTHENTICATED"] = "k", "true"
		if _, err := loadConfig(context.Background(), envconfig.MapLookuper(env)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(map[string]string{"DEEPGRAM_API_KEY": "k", "ALLOW_UNAUTHENTICATED": "true",
		"CONVERSATION_WEBHOOK": "https://h.example.com", "CONVERSATION_WEBHOOK_SECRET": "short"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newRelay(cfg, "k", nil, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Errorf("a short secret: %v", err)
	}
}

// docBlock is the first fenced block of lang in a doc's section.
func docBlock(t *testing.T, doc, section, lang string) string {
	t.Helper()
	m := regexp.MustCompile("(?s)```" + lang + "\n(.*?)```").FindStringSubmatch(docSection(t, doc, section))
	if m == nil {
		t.Fatalf("%s, %s: no %s block", doc, section, lang)
	}
	return m[1]
}

// TestDocumentedVerifiers runs the Node and Python verifiers of
// docs/conversation-records.md against a real signed delivery: each accepts
// it, and refuses it with its body changed by one byte, with another
// secret, or signed too long ago.
func TestDocumentedVerifiers(t *testing.T) {
	r := newReceiver(t)
	h := newHarness(t, webhookEnv(r), fakedeepgram.Options{})
	h.agentSession("service=agent").Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool { return len(r.deliveries()) == 1 })
	d := r.deliveries()[0]
	dir := t.TempDir()
	body := filepath.Join(dir, "body.json")
	tampered := filepath.Join(dir, "tampered.json")
	if err := os.WriteFile(body, d.body, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tampered, append([]byte(" "), d.body...), 0o600); err != nil {
		t.Fatal(err)
	}
	old := signature([]byte(testWebhookSecret), time.Now().Add(-time.Hour), d.body)
	node := docBlock(t, "docs/conversation-records.md", "Verifying a delivery", "js") +
		"\nconst fs = require('node:fs');\nconst [secret, header, file] = process.argv.slice(2);\n" +
		"console.log(verifyDgrelaySignature(secret, header, fs.readFileSync(file)) ? 'valid' : 'invalid');\n"
	python := docBlock(t, "docs/conversation-records.md", "Verifying a delivery", "python") +
		"\nimport sys\nsecret, header, path = sys.argv[1:]\n" +
		"print('valid' if verify_dgrelay_signature(secret.encode(), header, open(path, 'rb').read()) else 'invalid')\n"
	for _, v := range []struct{ name, file, code string }{{"node", "verify.js", node}, {"python3", "verify.py", python}} {
		script := filepath.Join(dir, v.file)
		if err := os.WriteFile(script, []byte(v.code), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			secret, header, body, want string
		}{
			{testWebhookSecret, d.header.Get("Dgrelay-Signature"), body, "valid"},
			{testWebhookSecret, d.header.Get("Dgrelay-Signature"), tampered, "invalid"},
			{testWebhookSecret + "x", d.header.Get("Dgrelay-Signature"), body, "invalid"},
			{testWebhookSecret, old, body, "invalid"},
			{testWebhookSecret, "t=1,v1=zz", body, "invalid"},
			{testWebhookSecret, "", body, "invalid"},
		} {
			out, err := exec.Command(v.name, script, c.secret, c.header, c.body).CombinedOutput()
			if got := strings.TrimSpace(string(out)); err != nil || got != c.want {
				t.Errorf("%s with %q on %s: %s %v, want %s", v.name, c.header, filepath.Base(c.body), out, err, c.want)
			}
		}
	}
}

// TestWebhookRedirectNotFollowed: a receiver that redirects (307, to a
// server of its choosing) is a refusal: the record goes nowhere else.
func TestWebhookRedirectNotFollowed(t *testing.T) {
	elsewhere := newReceiver(t)
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.srv.URL+"/stolen", http.StatusTemporaryRedirect)
	}))
	defer redirecting.Close()
	h := newHarness(t, map[string]string{"CONVERSATION_WEBHOOK": redirecting.URL, "CONVERSATION_WEBHOOK_SECRET": testWebhookSecret}, fakedeepgram.Options{})
	h.agentSession("service=agent").Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool {
		return strings.Contains(scrapeHandler(t, h), `dgrelay_conversation_webhook_dropped_total{reason="rejected"} 1`)
	})
	if n := len(elsewhere.deliveries()); n != 0 {
		t.Errorf("the redirect's target got %d records", n)
	}
	waitForLog(t, h.logs, `"last_error":"HTTP 307"`)
}
