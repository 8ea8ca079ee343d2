package main

import (
	"context"
	"dgrelay/internal/redislimits"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path"
	"reflect"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sethvargo/go-envconfig"
)

// Config is every setting dgrelay reads, all of it from the environment.
// The README's configuration table mirrors this struct; a test holds the two
// together.
type Config struct {
	// Port is the public listener's port, as Cloud Run injects it.
	Port int `env:"PORT, default=8080"`
	// ListenHost is the address PORT listens on: empty for every interface
	// with authentication and for this machine alone without it (a relay
	// without tokens spends the key for anyone who reaches it); localhost, or
	// an IP address (0.0.0.0 for every interface), says so outright.
	ListenHost string `env:"LISTEN_HOST"`

	// DeepgramAPIKey is the key itself (Fly secrets, Cloud Run --set-secrets,
	// local runs). Exactly one of it and DeepgramAPIKeySecret is set.
	DeepgramAPIKey string `env:"DEEPGRAM_API_KEY"`
	// DeepgramAPIKeySecret names a Secret Manager version,
	// projects/P/secrets/S/versions/V, read once at start.
	DeepgramAPIKeySecret string `env:"DEEPGRAM_API_KEY_SECRET"`
	// SecretManagerEmulatorHost points the Secret Manager client at a
	// plaintext gRPC endpoint without credentials (tests, local emulators).
	SecretManagerEmulatorHost string `env:"SECRETMANAGER_EMULATOR_HOST"`

	// AgentURL is the upstream for service=agent (and no service).
	AgentURL string `env:"DEEPGRAM_AGENT_URL, default=wss://agent.deepgram.com/v1/agent/converse"`
	// ListenURL is the upstream for service=transcription.
	ListenURL string `env:"DEEPGRAM_LISTEN_URL, default=wss://api.deepgram.com/v1/listen"`

	// MetricsPort serves Prometheus metrics on METRICS_PORT/metrics, apart
	// from the public port (0: off).
	MetricsPort int `env:"METRICS_PORT, default=9091"`
	// MetricsHost is the address METRICS_PORT listens on: this machine alone
	// unless a scraper elsewhere needs it (fly.toml sets :: for Fly's).
	MetricsHost string `env:"METRICS_HOST, default=localhost"`

	// EnablePprof serves Go's /debug/pprof on METRICS_PORT, for profiling a
	// live relay; it is never on the public port.
	EnablePprof bool `env:"ENABLE_PPROF, default=false"`

	// ProxyPath is the WebSocket route, served with and without a trailing slash.
	ProxyPath string `env:"PROXY_PATH, default=/ws/deepgram-proxy/"`
	// TryPage serves the try-it page at /try: a page that talks to an agent
	// through this relay. Off by default: on a relay without authentication
	// it lets anyone who finds it spend the key.
	TryPage bool `env:"TRY_PAGE, default=false"`
	// MaxMessageBytes is the read limit on both connections of a session.
	MaxMessageBytes int64 `env:"MAX_MESSAGE_BYTES, default=1048576"`
	// DrainTimeout is how long live sessions may go on after SIGTERM/SIGINT.
	DrainTimeout time.Duration `env:"DRAIN_TIMEOUT, default=8s"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL, default=info"`

	// JWTSecret verifies users' HS256 tokens.
	JWTSecret string `env:"JWT_SECRET"`
	// JWTSecretSecret names a Secret Manager version holding JWT_SECRET,
	// read once at start as DEEPGRAM_API_KEY_SECRET is, so that a deploy
	// can name it without knowing it (cloudbuild.yaml's _JWT_SECRET).
	JWTSecretSecret string `env:"JWT_SECRET_SECRET"`
	// JWKSURL verifies users' RS256/ES256/EdDSA tokens with the issuer's keys.
	JWKSURL string `env:"JWKS_URL"`
	// JWTIssuer, when set, must equal a token's iss.
	JWTIssuer string `env:"JWT_ISSUER"`
	// JWTAudience, when set, must include one of a token's aud (comma-separated);
	// "*" alone accepts any. Required with JWKS_URL.
	JWTAudience []string `env:"JWT_AUDIENCE"`
	// JWTLeeway is the clock skew allowed on exp, nbf and iat.
	JWTLeeway time.Duration `env:"JWT_LEEWAY, default=30s"`
	// AllowUnauthenticated lets the relay start without JWT_SECRET or JWKS_URL.
	AllowUnauthenticated bool `env:"ALLOW_UNAUTHENTICATED, default=false"`
	// AllowedOrigins are the browser origins allowed besides the relay's own
	// host: coder/websocket OriginPatterns (e.g. app.example.com, *.example.com).
	AllowedOrigins []string `env:"ALLOWED_ORIGINS"`
	// TrustProxyHeaders names the platform proxy in front, whose header then
	// gives the client IP: fly (Fly-Client-IP), cloudrun (the last
	// X-Forwarded-For address), or off (the socket's peer).
	TrustProxyHeaders string `env:"TRUST_PROXY_HEADERS, default=off"`

	// GoogleCloudProject, on Cloud Run, makes session log lines carry their
	// request's trace, so that Cloud Logging shows them with the request.
	GoogleCloudProject string `env:"GOOGLE_CLOUD_PROJECT"`

	// SettingsPolicy is the Settings policy: inline JSON or @path to a file.
	SettingsPolicy string `env:"SETTINGS_POLICY"`

	// MaxSessions caps live sessions on this instance.
	MaxSessions int `env:"MAX_SESSIONS, default=1000"`
	// MaxSessionsPerUser caps one identity's live sessions (0: no cap).
	MaxSessionsPerUser int `env:"MAX_SESSIONS_PER_USER, default=5"`
	// SessionRatePerMinute caps one identity's new sessions (0: no cap).
	SessionRatePerMinute int `env:"SESSION_RATE_PER_MINUTE, default=30"`
	// MaxSessionDuration ends a session at this age (0: never).
	MaxSessionDuration time.Duration `env:"MAX_SESSION_DURATION, default=2h"`
	// IdleTimeout ends a session with no message either way for this long (0: never).
	IdleTimeout time.Duration `env:"IDLE_TIMEOUT, default=60s"`
	// WriteTimeout ends a session whose peer does not take a message for this long.
	WriteTimeout time.Duration `env:"WRITE_TIMEOUT, default=10s"`
	// UpstreamRetries is how many more times a Deepgram dial is tried after a
	// failure another try may not meet, within the same 10 s bound.
	UpstreamRetries int `env:"UPSTREAM_RETRIES, default=1"`
	// RefusalWindow: a refusal repeated for the same identity within this
	// long of the last is answered before the upgrade, with an HTTP status
	// and Retry-After, so that reconnecting clients back off (0: every
	// refusal in band).
	RefusalWindow time.Duration `env:"REFUSAL_WINDOW, default=30s"`

	// MaxUserSecondsPerDay caps one identity's session time per UTC day
	// (0: no quota), across instances with Redis.
	MaxUserSecondsPerDay int `env:"MAX_USER_SECONDS_PER_DAY, default=0"`
	// RedisURL, when set, makes the per-user limits and the quota count
	// across every instance sharing that Redis: redis:// or rediss://.
	RedisURL string `env:"REDIS_URL"`
	// RedisKeyPrefix begins every key the relay writes, so that deployments
	// can share one Redis.
	RedisKeyPrefix string `env:"REDIS_KEY_PREFIX, default=dgrelay:"`
	// RedisTimeout bounds every Redis call.
	RedisTimeout time.Duration `env:"REDIS_TIMEOUT, default=500ms"`
	// RedisFailure is what admission does while Redis cannot answer: local
	// (the instance's own counters) or refuse (new sessions are refused).
	RedisFailure string `env:"REDIS_FAILURE, default=local"`
	// UsageTag, when user, tags every session at Deepgram with the user's
	// hashed identity, so usage reports break down by user.
	UsageTag string `env:"USAGE_TAG, default=off"`
}

// upstreamDialTimeout bounds the TCP, TLS and WebSocket handshake with
// Deepgram, so a client waits at most this long to hear about a failure.
const upstreamDialTimeout = 10 * time.Second

// The TRUST_PROXY_HEADERS values.
const (
	proxyFly      = "fly"
	proxyCloudRun = "cloudrun"
	proxyNone     = "off"
)

// The REDIS_FAILURE and USAGE_TAG values.
const (
	redisFailureLocal  = "local"
	redisFailureRefuse = "refuse"
	usageTagOff        = "off"
	usageTagUser       = "user"
)

// maxUpstreamRetries bounds UPSTREAM_RETRIES.
const maxUpstreamRetries = 3

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
		{"SESSION_RATE_PER_MINUTE", c.SessionRatePerMinute, 0},
		{"UPSTREAM_RETRIES", c.UpstreamRetries, 0},
		{"MAX_USER_SECONDS_PER_DAY", c.MaxUserSecondsPerDay, 0},
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
		return fmt.Errorf("REDIS_TIMEOUT: %s must be positive and at most %s: admission waits for it", c.RedisTimeout, maxRedisTimeout)
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

// anyAudience is the JWT_AUDIENCE that turns the audience check off on
// purpose.
const anyAudience = "*"

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

// checksAudience reports whether tokens' aud is checked at all.
func (c *Config) checksAudience() bool {
	return len(c.JWTAudience) > 0 && c.JWTAudience[0] != anyAudience
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
