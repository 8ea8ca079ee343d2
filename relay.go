package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"dgrelay/internal/policy"
	"dgrelay/internal/redislimits"
	"dgrelay/internal/scrub"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// relay serves the WebSocket route: it checks each request, dials Deepgram
// with the key it holds and runs one session per client.
type relay struct {
	cfg      *Config
	log      *slog.Logger
	agent    upstream
	listen   upstream
	dialOpts websocket.DialOptions
	sessions sessionSet
	auth     *authenticator
	origins  *originChecker
	users    *userLimits
	// shared counts the per-user limits in Redis (nil without REDIS_URL);
	// leases are this instance's admissions, renewed there every
	// renewEvery (leaseRenewEvery; tests shorten it); quota is
	// MAX_USER_SECONDS_PER_DAY.
	shared     *redislimits.Limits
	leases     leaseSet
	redisAfter redisAfter
	quota      time.Duration
	renewEvery time.Duration
	// userHashKey keys userKey, the identity's name in Redis and at Deepgram.
	userHashKey []byte
	watchdog    watchdog
	metrics     *metrics
	policy      *policy.Policy // nil: Settings pass untouched
	scrub       *scrub.Scrubber
	texts       *textBudget
	// tryPage is the try-it page's responses by route (nil: TRY_PAGE off).
	tryPage map[string]tryAsset
	// dialTimeout is upstreamDialTimeout; tests shorten it.
	dialTimeout time.Duration
	// refused remembers recent refusals, so that their repeats are
	// answered before the upgrade (refusals.go).
	refused *refusalMemory
	// agentOutage and listenOutage hold dials while Deepgram's endpoint
	// is known to be down (outage.go).
	agentOutage, listenOutage *outage
	// draining is set by the first shutdown signal: new upgrades get 503.
	draining atomic.Bool
	// dials ends at the drain deadline (endDials), cutting short the dials
	// still in flight: their clients get 503 rather than a process that
	// exits under them.
	dials    context.Context
	endDials context.CancelFunc
	// stop ends the watchdog, the lease renewals and the JWKS refresher;
	// stopped says the watchdog ended, background the renewals.
	stop       context.CancelFunc
	stopped    chan struct{}
	background sync.WaitGroup
}

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
	quota := time.Duration(cfg.MaxUserSecondsPerDay) * time.Second
	renewEvery := leaseRenewEvery
	rl := &relay{
		cfg:          cfg,
		policy:       policy,
		scrub:        scrub.New(apiKey, secrets),
		auth:         auth,
		origins:      origins,
		users:        newUserLimits(cfg.MaxSessionsPerUser, cfg.SessionRatePerMinute, quota, cfg.MaxMessageBytes),
		shared:       shared,
		quota:        quota,
		renewEvery:   renewEvery,
		userHashKey:  userHashKey(apiKey),
		watchdog:     newWatchdog(cfg.IdleTimeout, cfg.WriteTimeout, cfg.MaxSessionDuration, textGatherTimeout, quotaStep(quota, renewEvery)),
		metrics:      m,
		stopped:      make(chan struct{}),
		log:          log,
		dialTimeout:  upstreamDialTimeout,
		texts:        newTextBudget(cfg.MaxMessageBytes),
		agent:        agent,
		listen:       listen,
		dialOpts:     newDialOptions(apiKey),
		refused:      newRefusalMemory(refusalEntries, cfg.RefusalWindow),
		agentOutage:  &outage{service: "agent"},
		listenOutage: &outage{service: "transcription"},
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
	go rl.watch(ctx)
	rl.background.Add(1)
	go rl.summarizeRefusals(ctx, refusalSummaryEvery)
	if shared != nil || quota > 0 {
		rl.background.Add(1)
		go rl.renewals(ctx)
	}
	return rl, nil
}

// close stops the relay's background work: the watchdog, the lease
// renewals, the JWKS refresher, the Redis calls of sessions' ends (waited
// for: each bounded by REDIS_TIMEOUT) and the Redis client. Sessions are
// the drain's business.
func (rl *relay) close() {
	rl.stop()
	<-rl.stopped
	rl.background.Wait()
	rl.redisAfter.close()
	if rl.shared != nil {
		rl.shared.Close()
	}
}

// ServeHTTP is the WebSocket route. Its steps run in this order so that every
// refusal that can be an HTTP status is one, and nothing is dialled upstream
// for a request that will be refused: the request (handshake, route,
// origin, token), admission, the dial, the client's upgrade, the session.
func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rl.draining.Load() {
		rl.refuseDraining(w, r)
		return
	}
	service, up, forwarded, token, ok := rl.checkRequest(w, r)
	if !ok {
		return
	}
	s := &session{
		relay:   rl,
		id:      newSessionID(),
		service: service,
		remote:  clientIP(r, rl.cfg.TrustProxyHeaders),
		trace:   cloudTrace(r, rl.cfg.GoogleCloudProject),
		started: time.Now(),
	}
	if rl.auth.enabled() {
		sub, err := rl.auth.verify(token)
		if err != nil {
			f := errTokenInvalid
			errors.As(err, &f)
			// No identity: the address and the credential, hashed (a
			// token is never stored), so that another user at the same
			// address, or this one with a fresh token, is not affected.
			who := addressIdentity(s.remote) + " token:" + userKey(rl.userHashKey, "token\x00"+token)[:12]
			rl.refuse(w, r, s, f.end, "token_"+f.label, who, refusalRetryAfter)
			return
		}
		s.user, s.identity = sub, "sub:"+sub
	} else {
		s.identity = addressIdentity(s.remote)
	}
	s.userKey = userKey(rl.userHashKey, s.identity)
	if s.usageTag = rl.usageTagFor(s.userKey); s.usageTag != "" && service == "transcription" {
		forwarded = taggedQuery(forwarded, s.usageTag)
	}

	// Before admission: a session held by an outage must not spend its
	// user's rate, or the user would be rate limited when Deepgram is back.
	g := rl.outageFor(service).gate(s.started)
	if !g.ok {
		rl.refuse(w, r, s, refuseUpstreamDown, refuseUpstreamDown.cause, s.identity, g.wait)
		return
	}
	a, refused, draining := rl.admit(s)
	switch {
	case draining:
		g.abandon()
		rl.refuseDraining(w, r)
		return
	case a == nil:
		g.abandon()
		rl.refuse(w, r, s, refused, refused.cause, s.identity, retryAfterFor(refused, s.started))
		return
	}
	if !rl.open(w, r, s, up, forwarded, g) {
		a.release()
		return
	}
	// The session runs on goroutines of its own and this one returns: the
	// handler's stack, grown by the handshake, and the request go with it,
	// which is a third of an idle session's memory.
	go rl.serveSession(s, a)
}

// open connects s: Deepgram first, then the client's upgrade. It reports
// whether both are up; when not, it has answered the client.
func (rl *relay) open(w http.ResponseWriter, r *http.Request, s *session, up upstream, forwarded string, g gate) bool {
	// The upstream is dialled before the client's upgrade is accepted: the
	// browser cannot send until its socket opens, so the Settings it sends
	// the instant it does always find Deepgram connected, with no buffer
	// and no bound to choose. The cost is that the client's handshake waits
	// for Deepgram's, which a browser does anyway before Welcome.
	// The drain deadline cuts a dial short, as the client leaving does.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(rl.dials, cancel)()
	d := rl.dial(ctx, s.service, up, forwarded, s.log().With("session", s.id), g)
	s.dialTries, s.dialTime, s.dgRequestID = d.tries, d.took, d.requestID
	rl.dialed(s, g, d)
	switch {
	case rl.sessions.isClosed():
		// The drain deadline passed during the dial. The client is not
		// upgraded yet, so it hears 503 and retries elsewhere.
		if d.conn != nil {
			d.conn.CloseNow()
		}
		rl.refuseDraining(w, r)
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
	return true
}

// serveSession relays an open session until it ends, then accounts for it
// and releases its admission.
func (rl *relay) serveSession(s *session, a *admission) {
	defer a.release()
	a.relaying(s, time.Now())
	live := rl.started(s)
	s.run()
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

// run relays both directions until each has finished, then closes both
// connections: the two pipes of the session, one on the calling goroutine,
// the other on its own. The first to end the session wakes the other.
func (s *session) run() {
	up, down := s.pipes()
	done := make(chan struct{})
	go func() {
		defer close(done)
		down.Run()
	}()
	up.Run()
	<-done
	_ = s.client.Conn.Close()
	_ = s.upstream.Conn.Close()
}

// pipes makes the session's two pipes. Apart from run, like the accounting
// in serveSession, so that the frames an idle session's goroutines wait
// under stay small: the GC gives a goroutine's stack back only when little
// of it is in use.
//
//go:noinline
func (s *session) pipes() (up, down *wspipe.Pipe) {
	maxMsg := s.relay.cfg.MaxMessageBytes
	var upText wspipe.TextFilter
	switch {
	case s.relay.policy != nil:
		upText = s.policyFilter
	case s.usageTag != "" && s.service == "agent":
		// The Settings alone is read, to be tagged.
		upText = s.tagFirstSettings
	}
	up = wspipe.New(s, s.client, s.upstream, &s.up, wspipe.Options{MaxMessage: maxMsg, Text: upText, Budget: s.budget(wspipe.Client)})
	// Deepgram's words are scrubbed of the key and the policy's secrets
	// before a client reads them: text, control payloads, close reasons.
	// Binary messages are audio, relayed as they came.
	sc := s.relay.scrub
	down = wspipe.New(s, s.upstream, s.client, &s.down, wspipe.Options{MaxMessage: maxMsg,
		Text: func(msg []byte) wspipe.Verdict { return wspipe.Verdict{Out: sc.Text(msg)} }, Budget: s.budget(wspipe.Upstream), Scrub: sc.Short})
	return up, down
}
