package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path"
	"reflect"
	"strings"
	"time"

	"dgrelay/internal/redislimits"

	"github.com/redis/go-redis/v9"
	"github.com/sethvargo/go-envconfig"
)

// What a Config's values may be, checked once at load so that a bad deploy
// fails at start with the variable's name; and what the start derives from
// them: where each port listens, and the warnings it logs.

// maxUpstreamRetries bounds UPSTREAM_RETRIES.
const maxUpstreamRetries = 3

// maxResumeHistoryBytes bounds RESUME_HISTORY_BYTES: at MAX_SESSIONS=1000
// the default 64 KiB is at most 64 MB of records, the bound 4 GB.
const maxResumeHistoryBytes = 4 << 20

// maxRedisTimeout bounds REDIS_TIMEOUT: a client's connect waits for it
// when Redis is slow, and the renewal step must outlast it.
const maxRedisTimeout = 2 * time.Second

// maxUserSecondsPerDay bounds MAX_USER_SECONDS_PER_DAY well inside the
// milliseconds Redis counts in (a user's sessions together can exceed a day).
const maxUserSecondsPerDay = 1 << 30

// maxMessageBytesLimit bounds MAX_MESSAGE_BYTES: a message is read into
// memory when a policy or the scrub reads it whole, and the text budget's
// sizes are small multiples of it, which must not overflow.
const maxMessageBytesLimit = 1 << 30

// validate checks every value that envconfig cannot: ranges, the ways
// settings combine, and the forms of paths, URLs and hosts.
func (c *Config) validate() error {
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("PORT: %d is not a TCP port (1-65535)", c.Port)
	}
	if c.MetricsPort < 0 || c.MetricsPort > 65535 || (c.MetricsPort != 0 && c.MetricsPort == c.Port) {
		return fmt.Errorf("METRICS_PORT: %d must be a TCP port other than PORT, or 0 for none", c.MetricsPort)
	}
	if err := checkListenHost("LISTEN_HOST", c.ListenHost); err != nil {
		return err
	}
	if c.MetricsHost == "" {
		// Set but empty: envconfig's default is for an unset variable,
		// and empty would mean every interface, /debug/pprof included.
		return fmt.Errorf("METRICS_HOST: empty: use localhost (the default), an IP address, or :: for every interface")
	}
	if err := checkListenHost("METRICS_HOST", c.MetricsHost); err != nil {
		return err
	}
	for _, u := range []struct{ name, value string }{
		{"DEEPGRAM_AGENT_URL", c.AgentURL},
		{"DEEPGRAM_LISTEN_URL", c.ListenURL},
	} {
		if err := checkUpstreamURL(u.value); err != nil {
			return fmt.Errorf("%s: %w", u.name, err)
		}
	}
	if err := c.checkProxyPath(); err != nil {
		return err
	}
	if err := c.checkAudience(); err != nil {
		return err
	}
	if c.MaxMessageBytes < 1 || c.MaxMessageBytes > maxMessageBytesLimit {
		return fmt.Errorf("MAX_MESSAGE_BYTES: %d must be from 1 to %d (1 GiB)", c.MaxMessageBytes, maxMessageBytesLimit)
	}
	for _, n := range []struct {
		name  string
		value int
		min   int
	}{
		{"MAX_SESSIONS", c.MaxSessions, 1},
		{"MAX_SESSIONS_PER_USER", c.MaxSessionsPerUser, 0},
		{"MAX_TOTAL_SESSIONS", c.MaxTotalSessions, 0},
		{"SESSION_RATE_PER_MINUTE", c.SessionRatePerMinute, 0},
		{"UPSTREAM_RETRIES", c.UpstreamRetries, 0},
		{"MAX_USER_SECONDS_PER_DAY", c.MaxUserSecondsPerDay, 0},
		{"RESUME_HISTORY_BYTES", c.ResumeHistoryBytes, 0},
	} {
		if n.value < n.min {
			return fmt.Errorf("%s: %d must be at least %d", n.name, n.value, n.min)
		}
	}
	switch c.TrustProxyHeaders {
	case proxyFly, proxyCloudRun, proxyNone:
	case "false":
		c.TrustProxyHeaders = proxyNone
	default:
		// "true" too: each platform's header is only trustworthy behind
		// that platform, so the relay must know which one it is behind.
		return fmt.Errorf("TRUST_PROXY_HEADERS: %q is not one of fly, cloudrun, off", c.TrustProxyHeaders)
	}
	if c.ResumeHistoryBytes > maxResumeHistoryBytes {
		return fmt.Errorf("RESUME_HISTORY_BYTES: %d is over %d: every agent session may hold that much", c.ResumeHistoryBytes, maxResumeHistoryBytes)
	}
	if c.UpstreamRetries > maxUpstreamRetries {
		return fmt.Errorf("UPSTREAM_RETRIES: %d is over %d: a dial that keeps failing is an outage, and the client waits through every try", c.UpstreamRetries, maxUpstreamRetries)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"DRAIN_TIMEOUT", c.DrainTimeout},
		{"JWT_LEEWAY", c.JWTLeeway},
		{"MAX_SESSION_DURATION", c.MaxSessionDuration},
		{"IDLE_TIMEOUT", c.IdleTimeout},
		{"CONVERSATION_IDLE_TIMEOUT", c.ConversationIdleTimeout},
		{"REFUSAL_WINDOW", c.RefusalWindow},
	} {
		if d.value < 0 {
			return fmt.Errorf("%s: %s must not be negative", d.name, d.value)
		}
	}
	if c.WriteTimeout <= 0 {
		return fmt.Errorf("WRITE_TIMEOUT: %s must be positive", c.WriteTimeout)
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return fmt.Errorf("LOG_LEVEL: %w", err)
	}
	if err := c.checkRecords(); err != nil {
		return err
	}
	return c.checkSharedLimits()
}

// checkSharedLimits checks the Redis settings and USAGE_TAG. REDIS_URL is
// never echoed: it may hold a password.
func (c *Config) checkSharedLimits() error {
	if c.MaxUserSecondsPerDay > maxUserSecondsPerDay {
		return fmt.Errorf("MAX_USER_SECONDS_PER_DAY: %d is over %d", c.MaxUserSecondsPerDay, maxUserSecondsPerDay)
	}
	if c.RedisURL != "" {
		if _, err := redisOptions(c.RedisURL); err != nil {
			return fmt.Errorf("REDIS_URL: %w", err)
		}
	}
	// The prefix goes before a {hash tag}: a brace in it would move every
	// user's keys into one Redis Cluster slot, or split them.
	if strings.ContainsAny(c.RedisKeyPrefix, "{}") {
		return fmt.Errorf("REDIS_KEY_PREFIX: %q may not hold { or }", c.RedisKeyPrefix)
	}
	if c.RedisTimeout <= 0 || c.RedisTimeout > maxRedisTimeout {
		return fmt.Errorf("REDIS_TIMEOUT: %s must be positive and at most %s: every new session waits for it", c.RedisTimeout, maxRedisTimeout)
	}
	switch c.RedisFailure {
	case redisFailureLocal, redisFailureRefuse:
	default:
		return fmt.Errorf("REDIS_FAILURE: %q is not one of local, refuse", c.RedisFailure)
	}
	switch c.UsageTag {
	case usageTagOff, usageTagUser:
	default:
		return fmt.Errorf("USAGE_TAG: %q is not one of off, user", c.UsageTag)
	}
	return nil
}

// checkRecords checks CONVERSATION_LOG and CONVERSATION_WEBHOOK. The URL is
// the operator's alone: nothing a client sends goes into it.
func (c *Config) checkRecords() error {
	switch c.ConversationLog {
	case conversationLogOn, conversationLogOff:
	default:
		return fmt.Errorf("CONVERSATION_LOG: %q is not one of on, off", c.ConversationLog)
	}
	if c.ConversationWebhookSecret != "" && c.ConversationWebhookSecretSecret != "" {
		return errors.New("both CONVERSATION_WEBHOOK_SECRET and CONVERSATION_WEBHOOK_SECRET_SECRET are set; set exactly one")
	}
	if c.ConversationWebhook == "" {
		return nil
	}
	if err := checkWebhookURL(c.ConversationWebhook); err != nil {
		return fmt.Errorf("CONVERSATION_WEBHOOK: %w", err)
	}
	if c.ConversationWebhookSecret == "" && c.ConversationWebhookSecretSecret == "" {
		return errors.New("CONVERSATION_WEBHOOK needs CONVERSATION_WEBHOOK_SECRET (or CONVERSATION_WEBHOOK_SECRET_SECRET): every delivery is signed")
	}
	return nil
}

// checkWebhookURL allows https, and http to this machine only (a local
// receiver, tests): a transcript is personal data and crosses no network in
// clear. The value is not echoed: a paste could hold a credential.
func checkWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.User != nil {
		return errors.New("credentials in the URL are not allowed; deliveries are signed with CONVERSATION_WEBHOOK_SECRET")
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("the URL has no host")
	}
	if u.Fragment != "" {
		return errors.New("the URL has a #fragment, which is never sent")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopbackHost(u.Hostname()) {
			return nil
		}
		return errors.New("http:// is allowed only to this machine (localhost, 127.0.0.1, ::1): use https://")
	}
	return fmt.Errorf("scheme %q: must be https (or http to this machine)", u.Scheme)
}

// checkProxyPath refuses a PROXY_PATH that http.ServeMux would panic on
// ("/a b", "/ws/{$}"), read as a wildcard ("/ws/{x}"), or never route to: a
// path that is not clean is redirected to its clean form before it can match,
// and the probes own /healthz and /readyz. Only letters, digits, "-", ".",
// "_", "~" and "/" are allowed (RFC 3986's unreserved characters), so
// nothing in it means anything to the mux, and what the operator writes is
// what a browser sends.
func (c *Config) checkProxyPath() error {
	p := c.ProxyPath
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("PROXY_PATH: %q must start with /", p)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~/", r)) {
			return fmt.Errorf("PROXY_PATH: %q may hold only letters, digits and - . _ ~ /", p)
		}
	}
	// One trailing slash is allowed: the route is served with and without it.
	if clean := path.Clean(p); p != clean && (clean == "/" || p != clean+"/") {
		return fmt.Errorf("PROXY_PATH: %q is not a clean path (no //, . or .. segments); use %q", p, clean)
	}
	bare := strings.TrimSuffix(p, "/")
	switch bare {
	case "/healthz", "/readyz":
		return fmt.Errorf("PROXY_PATH: %q is the route of a health probe", p)
	}
	// The page's GET routes would take the WebSocket's GET handshakes.
	if c.TryPage && (bare == tryPath || strings.HasPrefix(bare, tryPath+"/")) {
		return fmt.Errorf("PROXY_PATH: %q is under %s, the try-it page's route with TRY_PAGE=true; choose another path", p, tryPath)
	}
	// The React component switches to its OpenAI protocol when the endpoint's
	// path contains /openai, and then no Deepgram session can work.
	if strings.Contains(strings.ToLower(p), "/openai") {
		return fmt.Errorf("PROXY_PATH: %q contains /openai, which makes the React component speak another protocol", p)
	}
	return nil
}

// checkAudience trims JWT_AUDIENCE's entries and refuses an empty one, or
// "*" among others. (newAuthenticator insists on an audience with JWKS_URL.)
func (c *Config) checkAudience() error {
	for i, a := range c.JWTAudience {
		c.JWTAudience[i] = strings.TrimSpace(a)
		if c.JWTAudience[i] == "" {
			return fmt.Errorf("JWT_AUDIENCE: an empty entry (the value is a comma-separated list of audiences)")
		}
		if c.JWTAudience[i] == anyAudience && len(c.JWTAudience) > 1 {
			return fmt.Errorf("JWT_AUDIENCE: * (any audience) goes alone")
		}
	}
	return nil
}

// authWarnings are the start-up warnings about a JWKS relay that accepts
// more than its operator may think: a missing issuer lets any issuer whose
// tokens the key set signs in, "*" any audience.
func (c *Config) authWarnings() []string {
	if c.JWKSURL == "" {
		return nil
	}
	var w []string
	if c.JWTIssuer == "" {
		w = append(w, "JWT_ISSUER is empty: a token from any issuer this key set signs for is accepted; set your provider's issuer")
	}
	if !c.checksAudience() {
		w = append(w, "JWT_AUDIENCE=*: a token for any audience is accepted; right only for a key set that signs your app's tokens alone")
	}
	return w
}

// plaintextUpstreams names the upstream URL variables that send the key in
// clear to another machine: ws:// to a host that is not this one. A
// self-hosted Deepgram on a private network may be that on purpose, so it is
// a warning at start, not a refusal.
func (c *Config) plaintextUpstreams() []string {
	var names []string
	for _, u := range []struct{ name, raw string }{
		{"DEEPGRAM_AGENT_URL", c.AgentURL},
		{"DEEPGRAM_LISTEN_URL", c.ListenURL},
	} {
		parsed, err := url.Parse(u.raw)
		if err != nil || parsed.Scheme != "ws" {
			continue
		}
		host := parsed.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			continue
		}
		names = append(names, u.name)
	}
	return names
}

// checkUpstreamURL checks a DEEPGRAM_AGENT_URL or DEEPGRAM_LISTEN_URL: a
// ws or wss URL with a host and no credentials.
func checkUpstreamURL(raw string) error {
	// The value is not echoed back: a mistaken paste could hold a credential.
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a valid URL")
	}
	if u.User != nil {
		return fmt.Errorf("credentials in the URL are not allowed; the key goes in DEEPGRAM_API_KEY")
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("scheme %q: must be ws or wss", u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("the URL has no host")
	}
	return nil
}

// parseLogLevel reads LOG_LEVEL, whatever its case.
func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
}

// redisOptions parses REDIS_URL (redislimits.ParseURL): its errors never
// quote it, as it may hold a password.
func redisOptions(raw string) (*redis.Options, error) { return redislimits.ParseURL(raw) }

// publicListen is where PORT listens, and why, for the start line. Without
// authentication (ALLOW_UNAUTHENTICATED=true and neither JWT_SECRET nor
// JWKS_URL), an empty LISTEN_HOST means this machine alone.
func (c *Config) publicListen(authenticated bool) (hosts []string, why string) {
	switch {
	case c.ListenHost != "":
		return listenHosts(c.ListenHost), "LISTEN_HOST=" + c.ListenHost
	case !authenticated:
		return loopbackHosts, "no authentication: this machine only; LISTEN_HOST=0.0.0.0 opens it to the network"
	}
	return hostsAll, "authentication on: every interface"
}

// metricsListen is where METRICS_PORT listens.
func (c *Config) metricsListen() []string {
	return listenHosts(c.MetricsHost)
}

// keepAlivePeriod is how often Deepgram's browser agent SDK sends KeepAlive
// (the React component: every 5 s); a shorter IDLE_TIMEOUT ends its quiet
// sessions between two of them.
const keepAlivePeriod = 10 * time.Second

// idleWarning is the start warning for an IDLE_TIMEOUT shorter than the
// browser SDKs' KeepAlive period, or "".
func (c *Config) idleWarning() string {
	if c.IdleTimeout <= 0 || c.IdleTimeout >= keepAlivePeriod {
		return ""
	}
	return fmt.Sprintf("IDLE_TIMEOUT=%s is under %s, the period of Deepgram's browser SDK KeepAlive: a user who is quiet (listening, thinking) will be cut off as idle",
		c.IdleTimeout, keepAlivePeriod)
}

// loadConfig reads the environment through lookup and checks every value, so
// a bad deploy fails at start with the variable's name rather than at the
// first call.
func loadConfig(ctx context.Context, lookup envconfig.Lookuper) (*Config, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: lookup}); err != nil {
		return nil, fmt.Errorf("configuration: %s", withVariableName(err))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return &c, nil
}

// withVariableName rewrites envconfig's "Field: problem" as "VARIABLE:
// problem", since the operator sets variables, not Go fields.
func withVariableName(err error) string {
	field, rest, ok := strings.Cut(err.Error(), ":")
	if !ok {
		return err.Error()
	}
	f, found := reflect.TypeFor[Config]().FieldByName(field)
	if !found {
		return err.Error()
	}
	name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return name + ":" + rest
}
