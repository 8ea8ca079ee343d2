// Command dgrelay lets a browser app talk to the Deepgram Voice Agent API
// without holding the Deepgram API key: it dials Deepgram with the key it
// holds and relays every WebSocket frame both ways, unchanged.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sethvargo/go-envconfig"
)

const (
	// readHeaderTimeout and maxHeaderBytes bound a handshake that is slow or
	// bloated before any of the relay's code runs.
	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 16 << 10
	// drainGrace is how long, after the drain deadline, peers get to answer
	// the 1012 close before their connections are dropped.
	drainGrace = 750 * time.Millisecond
	// shutdownTimeout bounds, after the drain, the wait for requests still
	// in a handler; Cloud Run's SIGKILL comes 10 s after SIGTERM.
	shutdownTimeout = time.Second
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

func main() {
	sig := make(chan os.Signal, 2)
	// Cloud Run sends SIGTERM; Fly sends SIGINT unless fly.toml says otherwise.
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	os.Exit(run(context.Background(), envconfig.OsLookuper(), os.Stdout, sig))
}

// run starts the relay and serves until the first signal, then drains. It
// returns the process's exit code: 0 after a drain, 1 for a start-up error.
// A second signal exits at once.
func run(ctx context.Context, env envconfig.Lookuper, stdout io.Writer, sig <-chan os.Signal) int {
	cfg, err := loadConfig(ctx, env)
	if err != nil {
		newLogger(stdout, slog.LevelInfo).Error("dgrelay cannot start", "error", err.Error())
		return 1
	}
	level, _ := parseLogLevel(cfg.LogLevel)
	log := newLogger(stdout, level)

	secrets := &secretReader{emulatorHost: cfg.SecretManagerEmulatorHost}
	defer secrets.close()
	key, keySource, err := loadAPIKey(ctx, cfg, secrets)
	if err != nil {
		log.Error("dgrelay cannot start", "error", err.Error())
		return 1
	}
	if err := loadJWTSecret(ctx, cfg, secrets); err != nil {
		log.Error("dgrelay cannot start", "error", err.Error())
		return 1
	}
	policy, err := loadPolicy(ctx, cfg.SettingsPolicy, env, secrets)
	if err != nil {
		log.Error("dgrelay cannot start", "error", err.Error())
		return 1
	}
	rl, err := newRelay(cfg, key, policy, log)
	if err != nil {
		log.Error("dgrelay cannot start", "error", err.Error())
		return 1
	}
	defer rl.close()
	if !rl.auth.enabled() {
		log.Warn("ALLOW_UNAUTHENTICATED=true: anyone who can reach this relay can spend your Deepgram key")
	}
	if cfg.TryPage && !rl.auth.enabled() {
		log.Warn("TRY_PAGE=true without authentication: anyone who opens /try can talk to an agent on your Deepgram key")
	}
	for _, w := range cfg.authWarnings() {
		log.Warn(w)
	}
	for _, name := range cfg.plaintextUpstreams() {
		log.Warn(name+" is ws://: the Deepgram key crosses the network unencrypted", "variable", name)
	}

	if w := cfg.idleWarning(); w != "" {
		log.Warn(w)
	}

	hosts, listenWhy := cfg.publicListen(rl.auth.enabled())
	lns, err := listenOn(hosts, cfg.Port)
	if err != nil {
		log.Error("dgrelay cannot start", "error", fmt.Errorf("listen on port %d: %w", cfg.Port, err).Error())
		return 1
	}
	srv := rl.httpServer()
	// Room for every Serve's return, so that none blocks after the select:
	// the metrics listeners are at most the loopback pair.
	serveErr := make(chan error, len(lns)+len(loopbackHosts))
	for _, ln := range lns {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	metricsAt := "off"
	if cfg.MetricsPort != 0 {
		mlns, err := listenOn(cfg.metricsListen(), cfg.MetricsPort)
		if err != nil {
			log.Error("dgrelay cannot start", "error", fmt.Errorf("METRICS_PORT: listen on %d: %w", cfg.MetricsPort, err).Error())
			_ = srv.Close()
			return 1
		}
		msrv := rl.metricsServer()
		for _, ln := range mlns {
			go func() { serveErr <- msrv.Serve(ln) }()
		}
		defer msrv.Close()
		metricsAt = listenAddrs(mlns)
	}

	log.Info("dgrelay started",
		"version", version,
		"port", cfg.Port,
		"listen", listenAddrs(lns),
		"listen_why", listenWhy,
		"metrics_port", cfg.MetricsPort,
		"metrics_listen", metricsAt,
		"path", cfg.ProxyPath,
		"agent_upstream", rl.agent.host,
		"listen_upstream", rl.listen.host,
		"key_source", keySource,
		"auth", rl.auth.mode(cfg),
		"settings_policy", policy != nil,
		"try_page", cfg.TryPage,
		"max_sessions", cfg.MaxSessions,
		"trust_proxy_headers", cfg.TrustProxyHeaders,
		"upstream_retries", cfg.UpstreamRetries,
		"max_user_seconds_per_day", cfg.MaxUserSecondsPerDay,
		"usage_tag", cfg.UsageTag,
		"limits", limitsWhere(rl.shared, rl.cfg.RedisFailure))

	select {
	case s := <-sig:
		log.Info("shutdown signal: draining", "signal", s.String(), "drain_timeout", cfg.DrainTimeout.String(), "sessions", rl.sessions.active())
	case err := <-serveErr:
		log.Error("server stopped", "error", err.Error())
		return 1
	}
	drained := make(chan struct{})
	defer close(drained)
	go func() {
		select {
		case s := <-sig:
			log.Warn("second signal: exiting now", "signal", s.String(), "sessions", rl.sessions.active())
			os.Exit(1)
		case <-drained:
		}
	}()

	rl.drain(cfg.DrainTimeout)
	// Requests still in a handler (a 503 being written, a probe) finish
	// before the listener's connections close; sessions were the drain's.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if srv.Shutdown(shutdownCtx) != nil {
		_ = srv.Close()
	}
	log.Info("dgrelay stopped")
	return 0
}

// httpServer is the public server, with the handshake bounds that apply
// before any of the relay's code runs, and the bounds on a plain request and
// an idle connection.
func (rl *relay) httpServer() *http.Server {
	return &http.Server{
		Handler:           rl.routes(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       httpReadTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
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
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(rl.log.Handler(), slog.LevelWarn)}
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

// drain runs after the first shutdown signal. New upgrades get 503 from now
// on; live sessions go on until they end or timeout passes. Then each client
// gets 1012 (service restart) and its upstream a normal close; peers that do
// not answer within drainGrace are dropped. It returns as soon as no session
// is left.
func (rl *relay) drain(timeout time.Duration) {
	rl.draining.Store(true)
	rl.metrics.drains.Inc()
	rl.metrics.draining.Set(1)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	if rl.sessions.waitIdle(deadline.C) {
		rl.sessions.close()
		return
	}
	live := rl.sessions.close()
	rl.endDials()
	rl.log.Info("drain deadline: closing sessions", "sessions", len(live))
	for _, s := range live {
		go s.end(endDrain.outcome(""))
	}
	grace := time.NewTimer(drainGrace)
	defer grace.Stop()
	if rl.sessions.waitIdle(grace.C) {
		return
	}
	if n := rl.sessions.active(); n > 0 {
		rl.log.Warn("drain: dropping sessions that did not close in time", "sessions", n)
		for _, s := range live {
			s.kill()
		}
	}
}
