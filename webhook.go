package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The webhook's bounds (docs/conversation-records.md). Variables so that
// tests can shorten the times and the queue's bytes.
var (
	// webhookQueueBytes bounds the bytes of the records waiting, beside
	// webhookQueueLen (below).
	webhookQueueBytes = 32 << 20
	// webhookBackoff is the wait before each retry, the last repeated;
	// each wait is jittered by ±20% so that many instances do not retry
	// a receiver that is back all at once.
	webhookBackoff = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 32 * time.Second, time.Minute}
	// webhookRetryFor bounds a delivery's retries: none starts later than
	// this after its first try (about 11 tries over five minutes).
	webhookRetryFor = 5 * time.Minute
	// webhookAttemptTimeout bounds one POST, answer included.
	webhookAttemptTimeout = 10 * time.Second
)

const (
	// webhookQueueLen and webhookQueueBytes bound what waits for the
	// webhook (sent, being sent or waiting to be tried again): a dead
	// receiver costs at most this much memory, and the records past it
	// are dropped and counted (queue_full). A drain ends many sessions at
	// once, hence room for a thousand small records.
	webhookQueueLen = 1000
	// webhookSenders is how many POSTs are under way at once: a slow
	// receiver does not hold every record behind one.
	webhookSenders = 4
	// webhookAnswerBytes is what is read of a receiver's answer (to reuse
	// the connection); it is never logged.
	webhookAnswerBytes = 4 << 10
	// signatureHeader carries t=<unix seconds>,v1=<hex HMAC-SHA256 of
	// "<t>.<body>"> keyed with CONVERSATION_WEBHOOK_SECRET.
	signatureHeader = "Dgrelay-Signature"
	// webhookDropMargin: deliveries still under way at the flush time are
	// cancelled this long before it, so that their drops are counted and
	// logged before the process, which exits at that time, is gone.
	webhookDropMargin = 100 * time.Millisecond
	// deliveryHeader is the session id: the same on every try of one
	// record, so that a receiver can drop a repeat.
	deliveryHeader = "Dgrelay-Delivery"
)

// webhook posts session records to CONVERSATION_WEBHOOK from a bounded
// queue, retrying with backoff for a bounded time. Nothing waits for it: a
// session's end hands its record over and goes on, and the shutdown gives
// it no more time than the drain already takes (flushBy).
type webhook struct {
	url    string
	secret []byte
	client *http.Client
	m      *recordMetrics
	log    *slog.Logger
	// ctx ends every delivery: cancelled by close once the flush time is
	// up. closing is closed when close begins: waits for a retry end then.
	ctx     context.Context
	cancel  context.CancelFunc
	closing chan struct{}
	senders chan struct{} // a token per POST under way
	wg      sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	closed  bool
	queued  int
	bytes   int
	flushAt time.Time
	// held are the queued deliveries of each identity, oldest first: when
	// the queue is full, the identity that holds the most gives up its
	// newest for another's record (send).
	held map[string][]*delivery
}

// delivery is one record in the queue, of session id and of identity (its
// key).
type delivery struct {
	id, identity string
	body         []byte
	// ctx ends the delivery: the webhook's, or cancel at its eviction.
	ctx    context.Context
	cancel context.CancelFunc
	// evicted, gone and sending are under the webhook's mu: pushed out of
	// a full queue for another identity's record (its drop counted by
	// send), its place given back, and a POST of it under way (which no
	// eviction picks: the receiver may take it).
	evicted, gone, sending bool
}

func newWebhook(target string, secret []byte, m *recordMetrics, log *slog.Logger) *webhook {
	ctx, cancel := context.WithCancel(context.Background())
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = webhookSenders
	return &webhook{url: target, secret: secret, m: m, log: log, ctx: ctx, cancel: cancel,
		closing: make(chan struct{}), senders: make(chan struct{}, webhookSenders), held: make(map[string][]*delivery),
		client: &http.Client{Transport: transport,
			// A redirect is not followed: the record goes to the URL the
			// operator set and nowhere else; a 3xx is a refusal.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// send queues body, the record of session id whose identity's key is
// identity, for delivery. It never blocks. When the queue is full, the
// identity that holds the most (records, or bytes when the byte bound is
// the one met) gives up its newest record not being sent, as long as it
// holds more than identity would with this one: while a receiver is down,
// the users who make the most sessions, or the largest records (one
// account, or hundreds), lose their own records first, not everyone's
// newest. A record that does not fit even so, or that comes after close,
// is dropped and counted.
func (w *webhook) send(id, identity string, body []byte) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.drop(id, dropShutdown, 0, "")
		return
	}
	var evicted []*delivery
	for w.queued >= webhookQueueLen || w.bytes+len(body) > webhookQueueBytes {
		victim := w.largestHolder(identity, len(body), w.queued < webhookQueueLen)
		if victim == nil {
			break
		}
		victim.evicted = true
		w.forget(victim)
		evicted = append(evicted, victim)
	}
	full := w.queued >= webhookQueueLen || w.bytes+len(body) > webhookQueueBytes
	var d *delivery
	if !full {
		d = &delivery{id: id, identity: identity, body: body}
		d.ctx, d.cancel = context.WithCancel(w.ctx)
		w.queued++
		w.bytes += len(body)
		w.held[identity] = append(w.held[identity], d)
		w.wg.Add(1)
	}
	w.mu.Unlock()
	for _, v := range evicted {
		v.cancel()
		w.drop(v.id, dropQueueFull, 0, "pushed out by another user's record")
	}
	if full {
		w.drop(id, dropQueueFull, 0, "")
		return
	}
	w.m.queued.Inc()
	go w.deliver(d)
}

// largestHolder is the newest delivery not being sent of the identity
// that holds the most, by bytes or else by records, among those that hold
// more than identity would with a record of size more and have one not
// being sent; nil when there is none. The webhook's mu is held.
func (w *webhook) largestHolder(identity string, size int, byBytes bool) *delivery {
	measure := func(ds []*delivery) int {
		if !byBytes {
			return len(ds)
		}
		n := 0
		for _, d := range ds {
			n += len(d.body)
		}
		return n
	}
	own := measure(w.held[identity]) + 1
	if byBytes {
		own += size - 1
	}
	var victim *delivery
	most := own
	for _, ds := range w.held {
		m := measure(ds)
		if m <= most {
			continue
		}
		for i := len(ds) - 1; i >= 0; i-- {
			if !ds[i].sending {
				victim, most = ds[i], m
				break
			}
		}
	}
	return victim
}

// forget gives d's place in the queue back, once. The webhook's mu is held.
func (w *webhook) forget(d *delivery) {
	if d.gone {
		return
	}
	d.gone = true
	w.queued--
	w.bytes -= len(d.body)
	ds := w.held[d.identity]
	if i := slices.Index(ds, d); i >= 0 {
		ds = slices.Delete(ds, i, i+1)
	}
	if len(ds) == 0 {
		delete(w.held, d.identity)
	} else {
		w.held[d.identity] = ds
	}
	w.m.queued.Dec()
}

// undelivered counts d dropped at shutdown, unless send has counted it
// pushed out.
func (w *webhook) undelivered(d *delivery, tries int, why string) {
	w.mu.Lock()
	evicted := d.evicted
	w.mu.Unlock()
	if !evicted {
		w.drop(d.id, dropShutdown, tries, why)
	}
}

// take waits for a sender for d and marks d under way; it reports false,
// with no sender taken, when d's context ends first or d was pushed out.
func (w *webhook) take(d *delivery) bool {
	select {
	case w.senders <- struct{}{}:
	case <-d.ctx.Done():
		return false
	}
	w.mu.Lock()
	ok := !d.evicted
	d.sending = ok
	w.mu.Unlock()
	if !ok {
		<-w.senders
	}
	return ok
}

// give ends the send take began.
func (w *webhook) give(d *delivery) {
	w.mu.Lock()
	d.sending = false
	w.mu.Unlock()
	<-w.senders
}

// deliver tries d until the receiver takes it, refuses it, or the retry
// time is up.
func (w *webhook) deliver(d *delivery) {
	defer func() {
		w.mu.Lock()
		w.forget(d)
		w.mu.Unlock()
		d.cancel()
		w.wg.Done()
	}()
	first := time.Now()
	for try := 0; ; try++ {
		if !w.take(d) {
			w.undelivered(d, try, "")
			return
		}
		status, err := w.post(d)
		w.give(d)
		switch {
		case err == nil && status >= 200 && status < 300:
			w.m.delivered.Inc()
			return
		case err == nil && !retryStatus(status):
			w.drop(d.id, dropRejected, try+1, "HTTP "+strconv.Itoa(status))
			return
		}
		why := "HTTP " + strconv.Itoa(status)
		if err != nil {
			why = w.errorWords(err)
		}
		if d.ctx.Err() != nil {
			w.undelivered(d, try+1, why)
			return
		}
		wait := withJitter(webhookBackoff[min(try, len(webhookBackoff)-1)])
		if time.Since(first)+wait > webhookRetryFor {
			w.drop(d.id, dropGaveUp, try+1, why)
			return
		}
		select {
		case <-w.closing:
			// Shutting down: one last try now, within the flush time,
			// rather than a wait past it.
			if !w.lastTry(d) {
				w.undelivered(d, try+2, why)
			}
			return
		case <-d.ctx.Done():
			w.undelivered(d, try+1, why)
			return
		case <-time.After(wait):
		}
		w.m.retries.Inc()
	}
}

// lastTry is a delivery's try at shutdown; it reports success.
func (w *webhook) lastTry(d *delivery) bool {
	if !w.take(d) {
		return false
	}
	defer w.give(d)
	w.m.retries.Inc()
	status, err := w.post(d)
	if err == nil && status >= 200 && status < 300 {
		w.m.delivered.Inc()
		return true
	}
	return false
}

// post sends d's record once, signed now, and returns the answer's status.
func (w *webhook) post(d *delivery) (int, error) {
	ctx, cancel := context.WithTimeout(d.ctx, webhookAttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(d.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "dgrelay/"+version)
	req.Header.Set(signatureHeader, signature(w.secret, time.Now(), d.body))
	req.Header.Set(deliveryHeader, d.id)
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.CopyN(io.Discard, resp.Body, webhookAnswerBytes)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// signature is the Dgrelay-Signature of body sent at t: the scheme Stripe's
// and others' webhooks use, so that receivers' verifiers apply. Signing the
// time with the body lets a receiver refuse a replay of an old delivery.
func signature(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// retryStatus: the answers worth another try (the receiver is busy, down or
// slow); any other is the receiver's refusal of this record.
func retryStatus(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooEarly ||
		status == http.StatusTooManyRequests || status >= 500
}

// withJitter is d, ±20%.
func withJitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// errorWords is a failed POST's error for a log line, without the URL (its
// path or query may hold the receiver's token).
func (w *webhook) errorWords(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

// drop counts a record that will not be delivered, with a log line: the
// session's own line has its id, which this one names.
func (w *webhook) drop(id, reason string, tries int, why string) {
	w.m.dropped.WithLabelValues(reason).Inc()
	w.log.Warn("conversation webhook: record dropped", "session", id, "reason", reason, "tries", tries, "last_error", why)
}

// flushBy sets how long close lets queued records go on: the shutdown's
// remaining time after the drain, so that the webhook never lengthens it.
func (w *webhook) flushBy(t time.Time) {
	w.mu.Lock()
	w.flushAt = t
	w.mu.Unlock()
}

// close takes no more records, lets those queued go on until the flush
// time (less webhookDropMargin), then cancels the rest (each dropped and counted) and waits for
// their goroutines, which end at once.
func (w *webhook) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	flushAt := w.flushAt
	w.mu.Unlock()
	close(w.closing)
	done := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(time.Until(flushAt.Add(-webhookDropMargin)))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	w.cancel()
	<-done
	w.client.CloseIdleConnections()
}
