package main

import (
	"fmt"
	"strings"
	"time"
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
	// MaxTotalSessions caps the live sessions of every instance sharing
	// REDIS_URL together (of this instance without it): at or below
	// Deepgram's concurrency limit for the project (0: no cap).
	MaxTotalSessions int `env:"MAX_TOTAL_SESSIONS, default=0"`
	// MaxSessionsPerUser caps one identity's live sessions (0: no cap).
	MaxSessionsPerUser int `env:"MAX_SESSIONS_PER_USER, default=5"`
	// SessionRatePerMinute caps one identity's new sessions (0: no cap).
	SessionRatePerMinute int `env:"SESSION_RATE_PER_MINUTE, default=30"`
	// MaxSessionDuration ends a session at this age (0: never).
	// The default is twice Deepgram's own two-hour limit, which the relay
	// carries a call past (UPSTREAM_RESUME): a bound on one call's cost,
	// not a second copy of Deepgram's.
	MaxSessionDuration time.Duration `env:"MAX_SESSION_DURATION, default=4h"`
	// IdleTimeout ends a session with no message either way for this long (0: never).
	IdleTimeout time.Duration `env:"IDLE_TIMEOUT, default=60s"`
	// ConversationIdleTimeout ends an agent session in which Deepgram has
	// reported no speech, the user's or the agent's, for this long,
	// whatever audio and KeepAlive flow; a client-side function call
	// pending pauses it (0: never). Deepgram bills by the connection
	// minute: an abandoned tab costs at most this much.
	ConversationIdleTimeout time.Duration `env:"CONVERSATION_IDLE_TIMEOUT, default=5m"`
	// WriteTimeout ends a session whose peer does not take a message for this long.
	WriteTimeout time.Duration `env:"WRITE_TIMEOUT, default=10s"`
	// UpstreamRetries is how many more times a Deepgram dial is tried after a
	// failure another try may not meet, within the same 10 s bound.
	UpstreamRetries int `env:"UPSTREAM_RETRIES, default=1"`
	// UpstreamResume carries an agent session to a new Deepgram connection
	// when its own ends (Deepgram's two-hour limit, a dropped connection, a
	// transient Error), the client's socket staying open; off ends the
	// session as Deepgram's connection ends (off).
	UpstreamResume onOff `env:"UPSTREAM_RESUME, default=on"`
	// ResumeHistoryBytes bounds the conversation an agent session keeps to
	// carry it to a new connection; the oldest turns go first.
	ResumeHistoryBytes int `env:"RESUME_HISTORY_BYTES, default=65536"`
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

	// ConversationLog, on, logs every non-audio message of an agent
	// session, both ways (personal data: off by default).
	ConversationLog string `env:"CONVERSATION_LOG, default=off"`
	// ConversationWebhook receives each agent session's record, signed,
	// at its end: https://, or http:// to this machine.
	ConversationWebhook string `env:"CONVERSATION_WEBHOOK"`
	// ConversationWebhookSecret keys the deliveries' signatures.
	ConversationWebhookSecret string `env:"CONVERSATION_WEBHOOK_SECRET"`
	// ConversationWebhookSecretSecret names a Secret Manager version holding
	// it, read once at start as DEEPGRAM_API_KEY_SECRET is.
	ConversationWebhookSecretSecret string `env:"CONVERSATION_WEBHOOK_SECRET_SECRET"`
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

// The CONVERSATION_LOG values.
const (
	conversationLogOn  = "on"
	conversationLogOff = "off"
)

// onOff is a switch written on or off (true and false read the same).
type onOff bool

// EnvDecode reads an onOff (go-envconfig's Decoder).
func (o *onOff) EnvDecode(v string) error {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "1":
		*o = true
	case "off", "false", "0":
		*o = false
	default:
		return fmt.Errorf("%q is not on or off", v)
	}
	return nil
}

// anyAudience is the JWT_AUDIENCE that turns the audience check off on
// purpose.
const anyAudience = "*"

// checksAudience reports whether tokens' aud is checked at all.
func (c *Config) checksAudience() bool {
	return len(c.JWTAudience) > 0 && c.JWTAudience[0] != anyAudience
}
