package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"dgrelay/internal/policy"
	"dgrelay/internal/redislimits"
	"dgrelay/internal/scrub"
	"dgrelay/internal/wspipe"
)

func newRelay(cfg *Config, apiKey string, policy *policy.Policy, log *slog.Logger) (*relay, error) {
	agent, err := newUpstream(cfg.AgentURL)
	if err != nil {
		return nil, fmt.Errorf("DEEPGRAM_AGENT_URL: %w", err)
	}
	listen, err := newUpstream(cfg.ListenURL)
	if err != nil {
		return nil, fmt.Errorf("DEEPGRAM_LISTEN_URL: %w", err)
	}
	origins, err := newOriginChecker(cfg.AllowedOrigins)
	if err != nil {
		return nil, err
	}
	auth, err := newAuthenticator(cfg, &http.Client{Timeout: jwksTimeout}, log)
	if err != nil {
		return nil, err
	}
	m := newMetrics(version)
	secrets := policy.SecretValues()
	var shared *redislimits.Limits
	if cfg.RedisURL != "" {
		if shared, err = newSharedLimits(cfg, log, m); err != nil {
			return nil, err
		}
		// The Redis password is scrubbed like the key: a library error
		// that quoted it would go no further.
		if opts, _ := redisOptions(cfg.RedisURL); opts.Password != "" {
			secrets = append(secrets, []byte(opts.Password))
		}
	}
	if cfg.ConversationWebhookSecret != "" {
		secrets = append(secrets, []byte(cfg.ConversationWebhookSecret))
	}
	records, err := newRecords(cfg, m.recordMetrics, log)
	if err != nil {
		if shared != nil {
			shared.Close()
		}
		return nil, err
	}
	quota := time.Duration(cfg.MaxUserSecondsPerDay) * time.Second
	renewEvery := leaseRenewEvery
	rl := &relay{
		tools: tools{
			cfg:     cfg,
			log:     log,
			metrics: m,
			policy:  policy,
			scrub:   scrub.New(apiKey, secrets),
			texts:   newTextBudget(cfg.MaxMessageBytes),
			records: records,
		},
		admissions: admissions{
			maxSessions: cfg.MaxSessions,
			maxTotal:    cfg.MaxTotalSessions,
			users:       newUserLimits(cfg.MaxSessionsPerUser, cfg.SessionRatePerMinute, quota, cfg.MaxMessageBytes),
			shared:      shared,
			quota:       quota,
			renewEvery:  renewEvery,
		},
		auth:             auth,
		origins:          origins,
		identityHashKey:  identityHashKey(apiKey),
		watchdog:         newWatchdog(cfg.IdleTimeout, cfg.ConversationIdleTimeout, cfg.WriteTimeout, cfg.MaxSessionDuration, textGatherTimeout, quotaStep(quota, renewEvery)),
		stopped:          make(chan struct{}),
		closed:           make(chan struct{}),
		dialTimeout:      upstreamDialTimeout,
		agent:            agent,
		listen:           listen,
		dialOpts:         newDialOptions(apiKey),
		refused:          newRefusalMemory(refusalEntries, cfg.RefusalWindow),
		beforeLogged:     newRefusalMemory(beforeLoggedEntries, cfg.RefusalWindow),
		credentialFloods: newCredentialFloods(cfg.RefusalWindow),
		agentOutage:      &outage{service: "agent"},
		listenOutage:     &outage{service: "transcription"},
	}
	if cfg.TryPage {
		if rl.tryPage, err = tryPageAssets(cfg.ProxyPath, auth.enabled()); err != nil {
			auth.stop()
			if shared != nil {
				shared.Close()
			}
			return nil, err
		}
	}
	if shared != nil {
		shared.SetRedact(rl.redact)
	}
	rl.sessions.init()
	rl.dials, rl.endDials = context.WithCancel(context.Background())
	ctx, stop := context.WithCancel(context.Background())
	rl.stop = func() { stop(); auth.stop(); rl.endDials() }
	go func() {
		defer close(rl.stopped)
		rl.watchdog.watch(ctx, &rl.sessions, rl.metrics, rl.users)
	}()
	rl.background.Add(1)
	go func() {
		defer rl.background.Done()
		rl.summarizeRefusals(ctx, refusalSummaryEvery)
	}()
	if shared != nil || quota > 0 {
		rl.background.Add(1)
		go func() {
			defer rl.background.Done()
			rl.renewals(ctx)
		}()
	}
	return rl, nil
}

// close stops the relay's background work: the watchdog, the lease
// renewals, the JWKS refresher, the Redis calls of sessions' ends (waited
// for: each bounded by REDIS_TIMEOUT), the webhook's deliveries and the
// Redis client. Sessions are the drain's business.
func (rl *relay) close() { rl.closeBy(time.Time{}) }

// closeBy is close, waiting no later than deadline (zero: for all of it):
// a process that must exit by then leaves what still hangs, a Redis call or
// a delivery, to end with it (a lease then lapses in Redis by its TTL).
func (rl *relay) closeBy(deadline time.Time) {
	rl.closing.Do(func() {
		go func() {
			defer close(rl.closed)
			// The webhook's close, which counts and logs the records it
			// drops at its flush time, waits for no Redis call.
			var records sync.WaitGroup
			records.Go(rl.records.close)
			rl.stop()
			<-rl.stopped
			rl.background.Wait()
			rl.redisAfter.close()
			if rl.shared != nil {
				rl.shared.Close()
			}
			records.Wait()
		}()
	})
	if deadline.IsZero() {
		<-rl.closed
		return
	}
	wait := time.NewTimer(time.Until(deadline))
	defer wait.Stop()
	select {
	case <-rl.closed:
	case <-wait.C:
	}
}

// The bounds of the relay's HTTP servers.
const (
	// readHeaderTimeout and maxHeaderBytes bound a handshake that is slow or
	// bloated before any of the relay's code runs. maxHeaderBytes bounds
	// the whole request head, request line included.
	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 16 << 10
	// httpHeaderSlack is what net/http reads past Server.MaxHeaderBytes
	// (its server.go, initialReadLimitSize: 4096 bytes for its buffer), so
	// the servers are given maxHeaderBytes less it.
	httpHeaderSlack = 4096
)

// The HTTP timeouts past the handshake's; tests shorten them.
var (
	// httpReadTimeout bounds reading a whole request, body included: no
	// route reads a body, but net/http drains a small unread one before it
	// answers, and a client that trickled it held the connection and its
	// goroutine for as long as it liked. It does not cut a handler that
	// runs long: net/http lifts the read deadline once a request without a
	// body is read (so a pprof profile runs its course), and the hijack
	// clears it, so a WebSocket upgrade's wait for Deepgram's handshake and
	// the session are bounded by their own limits
	// (TestUpgradeOutlivesReadTimeout holds that).
	httpReadTimeout = 30 * time.Second
	// httpIdleTimeout closes a keep-alive connection that sends no next
	// request (a probe, a scrape, a 426), which otherwise held a descriptor
	// and ~20 KB for ever. Two minutes, not less: a proxy in front that
	// pools connections (Go's keeps an idle one 90 s, nginx's 60 s) should
	// be the one to close it, or the relay's close can race the request the
	// proxy sends on it; and probes and scrapes come more often than that.
	httpIdleTimeout = 120 * time.Second
)

// httpServer is the public server, with the handshake bounds that apply
// before any of the relay's code runs, and the bounds on a plain request and
// an idle connection.
func (rl *relay) httpServer() *http.Server {
	return &http.Server{
		Handler:           rl.routes(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       httpReadTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes - httpHeaderSlack,
		ErrorLog:          slog.NewLogLogger(rl.log.Handler(), slog.LevelWarn),
	}
}

// metricsServer serves /metrics (and, with ENABLE_PPROF, /debug/pprof), on
// its own port so that the public one never exposes them. It has the public
// server's bounds on a request and an idle connection.
func (rl *relay) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", rl.metrics.handler())
	if rl.cfg.EnablePprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: httpReadTimeout, IdleTimeout: httpIdleTimeout,
		MaxHeaderBytes: maxHeaderBytes - httpHeaderSlack, ErrorLog: slog.NewLogLogger(rl.log.Handler(), slog.LevelWarn)}
}

// routes is the public mux: the WebSocket route under PROXY_PATH, with and
// without its trailing slash, the two probes, and with TRY_PAGE the try-it
// page.
func (rl *relay) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		// The key is loaded before the listener opens, so only a drain can
		// make a serving relay unready.
		if rl.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "draining\n")
			return
		}
		// An outage of Deepgram is detail, not unreadiness: every instance
		// sees it at once, and a platform that took them all out of
		// rotation would answer clients with its own error page in place
		// of the relay's UPSTREAM_UNAVAILABLE and Retry-After.
		_, _ = io.WriteString(w, "ready\n"+rl.agentOutage.status(time.Now())+rl.listenOutage.status(time.Now()))
	})
	for _, p := range proxyPatterns(rl.cfg.ProxyPath) {
		mux.Handle(p, rl)
	}
	// Deepgram's own paths, with any prefix: what its SDKs append to a base
	// URL (route.go's deepgramPaths). Everything else is 404, as before.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := pathService(rl.cfg.ProxyPath, r.URL.Path); !ok {
			http.NotFound(w, r)
			return
		}
		rl.ServeHTTP(w, r)
	})
	if rl.tryPage != nil {
		routeTryPage(mux, rl.tryPage)
	}
	return mux
}

// proxyPatterns turns PROXY_PATH into exact-match mux patterns for the path
// with and without its trailing slash.
func proxyPatterns(path string) []string {
	bare := strings.TrimRight(path, "/")
	if bare == "" {
		return []string{"/{$}"}
	}
	return []string{bare, bare + "/{$}"}
}

// ServeHTTP is the WebSocket route: one straight path, every refusal to
// one answer. admitRequest decides, refuse answers a request that does not
// become a session, open connects one that does, and serve runs it.
func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f := rl.read(r)
	s, a, g, rf := rl.admitRequest(r, f)
	if rf != nil {
		rl.refuse(w, r, f, rf)
		return
	}
	if !rl.open(w, r, s, g) {
		a.release()
		return
	}
	// The session runs on goroutines of its own and this one returns: the
	// handler's stack, grown by the handshake, and the request go with it,
	// which is a third of an idle session's memory.
	go rl.serve(s, a)
}

// admitRequest decides whether r, whose facts are f, becomes a session. Its
// steps run in this order so that every refusal that can be an HTTP status
// is one, and nothing is dialled for a request that will be refused: the
// drain, the request (handshake, route, origin, token), Deepgram's outage
// gate, then the instance's and the user's limits. It returns the session
// with its admission and its gate, or the refusal that answers r.
func (rl *relay) admitRequest(r *http.Request, f *facts) (*session, *admission, gate, *refusal) {
	if rl.draining.Load() {
		return nil, nil, gate{}, refusedBefore(httpDraining, drainingDetail)
	}
	if rf := rl.check(r, f); rf != nil {
		return nil, nil, gate{}, rf
	}
	if fail := rl.identify(f); fail != nil {
		return nil, nil, gate{}, tokenRefused(fail, addressIdentity(f.remote), rl.credentialHash(f))
	}
	s := &session{tools: &rl.tools, facts: f, id: newSessionID(), started: time.Now()}
	// Before admission: a session held by an outage must not spend its
	// user's rate, or the user would be rate limited when Deepgram is back.
	g := rl.outageFor(f.service).gate(s.started, f.identity)
	if !g.ok {
		return nil, nil, gate{}, refusedBy(refuseUpstreamDown, f.identity, g.wait)
	}
	a, refused, draining := rl.admit(s)
	switch {
	case draining:
		g.abandon()
		return nil, nil, gate{}, refusedBefore(httpDraining, drainingDetail)
	case a == nil:
		g.abandon()
		return nil, nil, gate{}, refusedBy(refused, f.identity, retryAfterFor(refused, s.started))
	}
	return s, a, g, nil
}

// drainingDetail is the body of the answer to a request that meets the drain.
const drainingDetail = "dgrelay is restarting; retry"

// open connects s: Deepgram first, then the client's upgrade. It reports
// whether both are up; when not, it has answered the client.
func (rl *relay) open(w http.ResponseWriter, r *http.Request, s *session, g gate) bool {
	// The upstream is dialled before the client's upgrade is accepted: the
	// browser cannot send until its socket opens, so the Settings it sends
	// the instant it does always find Deepgram connected, with no buffer
	// and no bound to choose. The cost is that the client's handshake waits
	// for Deepgram's, which a browser does anyway before Welcome.
	// The drain deadline cuts a dial short, as the client leaving does.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(rl.dials, cancel)()
	d := rl.dial(ctx, s.service, s.endpoint, s.forwarded, s.log().With("session", s.id), g)
	s.dialTries, s.dialTime, s.dgRequestID = d.tries, d.took, d.requestID
	rl.dialed(s, g, d)
	switch {
	case rl.sessions.isClosed():
		// The drain deadline passed during the dial. The client is not
		// upgraded yet, so it hears 503 and retries elsewhere.
		if d.conn != nil {
			d.conn.CloseNow()
		}
		rl.refuse(w, r, s.facts, refusedBefore(httpDraining, drainingDetail))
		return false
	case d.failure != nil && d.failure.cancelled:
		// The client left (net/http saw its end of the connection
		// close). Nothing is answered: the connection is dropped, not
		// given net/http's default 200 for a handler that wrote none,
		// which a client that only half-closed would read as success.
		rl.clientGone(s)
		dropUnanswered(w)
		return false
	}
	if d.failure != nil && !reachedDeepgram(d.failure) && rl.refused.repeat(s.identity, refuseUpstreamDown.cause, time.Now()) {
		// A probe that failed, or a dial that met an outage the client
		// was told of already: the repeat is answered before the upgrade.
		rl.refuseRepeated(w, d.failure.end, refuseUpstreamDown.cause, rl.outageFor(s.service).wait(time.Now()))
		return false
	}
	client, clientRaw, err := rl.accept(w, r)
	if err != nil {
		// Accept has written the HTTP answer; a client that left during the
		// dial lands here too.
		if d.conn != nil {
			d.conn.CloseNow()
		}
		// The error quotes the client's own headers: bounded and cleaned.
		s.log().Info("client handshake failed", "session", s.id, "remote", s.remote, "error", rl.redact(err.Error()))
		return false
	}
	if d.failure != nil {
		// Told in band; when Deepgram was not reached, the check above
		// remembered it, so this identity's next refusal by the outage it
		// may have begun is a repeat.
		rl.refuseUnreachable(client, s, d.failure)
		return false
	}
	s.client = clientRaw.takeOver(client, wspipe.Client)
	s.upstream = d.handoff.takeOver(d.conn, wspipe.Upstream)
	if s.service == "agent" && rl.cfg.UpstreamResume {
		s.cont = newContinuation(rl.cfg.ResumeHistoryBytes)
		s.redial = func(ctx context.Context) dialed { return rl.redial(ctx, s) }
	}
	return true
}

// serve relays an open session until it ends, then accounts for it and
// releases its admission.
func (rl *relay) serve(s *session, a *admission) {
	defer a.release()
	a.relaying(s, time.Now())
	live := rl.started(s)
	s.runPipes()
	rl.finished(s, live)
}

// started counts s as active and live for the drain. When the drain
// deadline passed between open's look and now, the session ends before it
// starts, but its pipes run all the same: they write each side's close (1012
// to the client) and hear the answers, so the client is told, not dropped.
//
//go:noinline
func (rl *relay) started(s *session) (live bool) {
	rl.metrics.sessionsActive.WithLabelValues(s.service).Inc()
	if live = rl.sessions.add(s); !live {
		s.end(endDrain.outcome(""))
	}
	return live
}

// finished is started's counterpart, with the session's log line.
//
//go:noinline
func (rl *relay) finished(s *session, live bool) {
	if live {
		rl.sessions.remove(s)
	}
	rl.metrics.sessionsActive.WithLabelValues(s.service).Dec()
	s.ended()
}
