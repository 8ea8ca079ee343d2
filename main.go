// Command dgrelay lets a browser app talk to the Deepgram Voice Agent API
// without holding the Deepgram API key: it dials Deepgram with the key it
// holds and relays every WebSocket frame both ways, unchanged.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sethvargo/go-envconfig"
)

func main() {
	if code, exit := command(os.Args[1:], os.Stdout, os.Stderr); exit {
		os.Exit(code)
	}
	sig := make(chan os.Signal, 2)
	// Cloud Run sends SIGTERM; Fly sends SIGINT unless fly.toml says otherwise.
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	os.Exit(run(context.Background(), processEnv{}, os.Stdout, sig))
}

// run starts the relay and serves until the first signal, then drains. It
// returns the process's exit code: 0 after a drain, 1 for a start-up error.
// A second signal exits at once.
func run(ctx context.Context, env envconfig.Lookuper, stdout io.Writer, sig <-chan os.Signal) int {
	cfg, err := loadConfig(ctx, env)
	if err != nil {
		log := newLogger(stdout, slog.LevelInfo)
		warnUnknownVariables(log, env) // a misspelling may be why
		log.Error("dgrelay cannot start", "error", err.Error())
		return 1
	}
	level, _ := parseLogLevel(cfg.LogLevel)
	log := newLogger(stdout, level)
	warnUnknownVariables(log, env)

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
	if err := loadWebhookSecret(ctx, cfg, secrets); err != nil {
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
	// Zero until a signal: then the moment the process must be gone by.
	var stopBy time.Time
	defer func() { rl.closeBy(stopBy) }()
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
		"try_page", tryPageAt(cfg.TryPage, lns),
		"max_sessions", cfg.MaxSessions,
		"max_total_sessions", cfg.MaxTotalSessions,
		"trust_proxy_headers", cfg.TrustProxyHeaders,
		"upstream_retries", cfg.UpstreamRetries,
		"max_user_seconds_per_day", cfg.MaxUserSecondsPerDay,
		"usage_tag", cfg.UsageTag,
		"conversation_log", cfg.ConversationLog,
		"conversation_webhook", webhookHost(cfg),
		"limits", limitsWhere(rl.shared, rl.cfg.RedisFailure))
	defer startKeyCheck(log, cfg.AgentURL, key)()

	select {
	case s := <-sig:
		stopBy = time.Now().Add(cfg.DrainTimeout + stopTail)
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
	// Session records still queued go on while the requests below finish,
	// and no longer: the webhook never lengthens the shutdown.
	tail := shutdownBy(stopBy)
	rl.records.flushBy(tail)
	// Requests still in a handler (a 503 being written, a probe) finish
	// before the listener's connections close; sessions were the drain's.
	shutdownCtx, cancel := context.WithDeadline(context.Background(), tail)
	defer cancel()
	if srv.Shutdown(shutdownCtx) != nil {
		_ = srv.Close()
	}
	log.Info("dgrelay stopped")
	return 0
}
