package main

import (
	"context"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Port:            8080,
		MetricsPort:     9091,
		MetricsHost:     "localhost",
		AgentURL:        "wss://agent.deepgram.com/v1/agent/converse",
		ListenURL:       "wss://api.deepgram.com/v1/listen",
		ProxyPath:       "/ws/deepgram-proxy/",
		MaxMessageBytes: 1 << 20,
		DrainTimeout:    8 * time.Second,
		LogLevel:        "info",
	}
	want.JWTLeeway = 30 * time.Second
	want.MaxSessions, want.MaxSessionsPerUser, want.SessionRatePerMinute = 1000, 5, 30
	want.MaxSessionDuration, want.IdleTimeout, want.WriteTimeout = 4*time.Hour, time.Minute, 10*time.Second
	want.ConversationIdleTimeout = 5 * time.Minute
	want.UpstreamResume, want.ResumeHistoryBytes = onOff(true), 64<<10
	want.UpstreamRetries, want.TrustProxyHeaders, want.RefusalWindow = 1, "off", 30*time.Second
	want.RedisKeyPrefix, want.RedisTimeout, want.RedisFailure, want.UsageTag = "dgrelay:", 500*time.Millisecond, "local", "off"
	want.ConversationLog = "off"
	if !reflect.DeepEqual(*cfg, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", *cfg, want)
	}
}

// TestConfigErrorsNameTheVariable: every bad value stops the start with a
// message that names its variable, and run exits non-zero.
func TestConfigErrorsNameTheVariable(t *testing.T) {
	cases := map[string]string{
		"PORT":                     "eighty",
		"MAX_MESSAGE_BYTES":        "0",
		"DRAIN_TIMEOUT":            "soon",
		"LOG_LEVEL":                "loud",
		"DEEPGRAM_AGENT_URL":       "https://agent.deepgram.com/v1/agent/converse",
		"DEEPGRAM_LISTEN_URL":      "wss://user:pass@api.deepgram.com/v1/listen",
		"PROXY_PATH":               "/openai/proxy",
		"UPSTREAM_RETRIES":         "4",
		"TRUST_PROXY_HEADERS":      "true",
		"REDIS_URL":                "http://user:pass@redis.internal:6379",
		"REDIS_FAILURE":            "open",
		"REDIS_TIMEOUT":            "0s",
		"REDIS_KEY_PREFIX":         "app{1}:",
		"USAGE_TAG":                "sub",
		"MAX_USER_SECONDS_PER_DAY": "-1",
		"UPSTREAM_RESUME":          "maybe",
		"RESUME_HISTORY_BYTES":     "8388608",
	}
	for name, value := range cases {
		env := map[string]string{"DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true", name: value}
		logs := &lockedBuffer{}
		code := run(context.Background(), envconfig.MapLookuper(env), logs, make(chan os.Signal))
		if code == 0 {
			t.Errorf("%s=%s: exit code 0", name, value)
		}
		out := logs.String()
		if !strings.Contains(out, name) || !strings.Contains(out, `"severity":"ERROR"`) {
			t.Errorf("%s=%s: the error does not name the variable: %s", name, value, out)
		}
		if strings.Contains(out, "pass@") {
			t.Errorf("%s: the error echoes a credential: %s", name, out)
		}
	}
}

func TestProxyPatterns(t *testing.T) {
	for path, want := range map[string]string{
		"/ws/deepgram-proxy/": "/ws/deepgram-proxy /ws/deepgram-proxy/{$}",
		"/ws/deepgram-proxy":  "/ws/deepgram-proxy /ws/deepgram-proxy/{$}",
		"/":                   "/{$}",
	} {
		if got := strings.Join(proxyPatterns(path), " "); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
}

// TestReadmeConfigTable holds docs/configuration.md's table to the
// Config struct: every variable in both, with the same default.
func TestReadmeConfigTable(t *testing.T) {
	table := docSection(t, "docs/configuration.md", "Configuration")
	documented := map[string]string{}
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		documented[name] = strings.Trim(strings.TrimSpace(cells[2]), "`")
	}
	ty := reflect.TypeFor[Config]()
	for i := 0; i < ty.NumField(); i++ {
		tag := ty.Field(i).Tag.Get("env")
		name, opts, _ := strings.Cut(tag, ",")
		def := ""
		if _, d, ok := strings.Cut(opts, "default="); ok {
			def = d
		}
		got, ok := documented[name]
		if !ok {
			t.Errorf("%s is not in docs/configuration.md's table", name)
			continue
		}
		if got != def {
			t.Errorf("%s: docs/configuration.md says default %q, the code %q", name, got, def)
		}
		delete(documented, name)
	}
	for name := range documented {
		t.Errorf("docs/configuration.md documents %s, which the code does not read", name)
	}
}

// TestPlaintextUpstreamWarning: a ws:// upstream on another machine is
// warned about at start (the key would cross the network in clear); one on
// this machine, as in tests, and wss:// are not.
func TestPlaintextUpstreamWarning(t *testing.T) {
	cfg := &Config{AgentURL: "ws://deepgram.internal:8080/v1/agent/converse", ListenURL: "wss://api.deepgram.com/v1/listen"}
	if got := cfg.plaintextUpstreams(); !reflect.DeepEqual(got, []string{"DEEPGRAM_AGENT_URL"}) {
		t.Errorf("flagged %v", got)
	}
	for _, local := range []string{"ws://127.0.0.1:9/v1/listen", "ws://localhost:9/v1/listen", "ws://[::1]:9/v1/listen"} {
		cfg := &Config{AgentURL: "wss://agent.deepgram.com/v1/agent/converse", ListenURL: local}
		if got := cfg.plaintextUpstreams(); len(got) != 0 {
			t.Errorf("%s flagged", local)
		}
	}

	logs := &lockedBuffer{}
	sig := make(chan os.Signal, 1)
	done := make(chan int)
	go func() {
		done <- run(context.Background(), envconfig.MapLookuper(map[string]string{
			"PORT": freePort(t), "METRICS_PORT": "0", "DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true",
			"DEEPGRAM_LISTEN_URL": "ws://10.0.0.9:8080/v1/listen",
		}), logs, sig)
	}()
	waitForLog(t, logs, "dgrelay started")
	sig <- syscall.SIGTERM
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !strings.Contains(logs.String(), `"severity":"WARNING","message":"DEEPGRAM_LISTEN_URL is ws://: the Deepgram key crosses the network unencrypted"`) {
		t.Errorf("no warning:\n%s", logs)
	}
}

// TestProxyPathValidation: a PROXY_PATH the mux would panic on, turn into a
// wildcard, or never route to is refused at start with an error naming it;
// the paths the README shows start.
func TestProxyPathValidation(t *testing.T) {
	for path, ok := range map[string]bool{
		"/ws/deepgram-proxy/": true,
		"/ws/deepgram-proxy":  true,
		"/":                   true,
		"/v1/agent/converse":  true,
		"/a-b_c.d~e/F9":       true,
		"/healthz/ws":         true,
		"ws/deepgram-proxy":   false, // no leading slash
		"":                    false,
		"/a b":                false, // the mux reads "/a b" as method "/a" and path "b", and panics
		"/ws/{$}":             false, // panics
		"/ws/{x...}/y":        false, // panics
		"/ws/{x}":             false, // would be a wildcard
		"/ws/%7Bx%7D":         false,
		"/ws/x?y":             false,
		"/ws/x#y":             false,
		"/ws/caf\u00e9":       false,
		"/ws/../x":            false, // not clean: the mux redirects such a path elsewhere
		"/ws/./x":             false,
		"/ws//x":              false,
		"/ws//":               false,
		"//":                  false,
		"/ws/.":               false,
		"/healthz":            false, // the probes' routes: the WebSocket would never be reached
		"/healthz/":           false,
		"/readyz":             false,
	} {
		err := (&Config{ProxyPath: path}).checkProxyPath()
		switch {
		case ok && err != nil:
			t.Errorf("%q refused: %v", path, err)
		case !ok && err == nil:
			t.Errorf("%q accepted", path)
		case !ok && !strings.HasPrefix(err.Error(), "PROXY_PATH: "):
			t.Errorf("%q: the error does not name PROXY_PATH: %v", path, err)
		}
	}
}

// TestProxyPathRefusedByRun: the paths that used to panic in http.ServeMux
// (or start with a route that can never be reached) make run exit 1 with its
// one-line start error, without a panic.
func TestProxyPathRefusedByRun(t *testing.T) {
	for _, path := range []string{"/a b", "/ws/{$}", "/ws/{x...}/y", "/ws/{x}", "/healthz", "/ws/../x"} {
		logs := &lockedBuffer{}
		// A relay that starts anyway is stopped, so that the test fails
		// rather than hangs.
		sig := make(chan os.Signal, 1)
		stop := time.AfterFunc(5*time.Second, func() { sig <- syscall.SIGTERM })
		code, panicked := func() (code int, panicked any) {
			defer func() { panicked = recover() }()
			return run(context.Background(), envconfig.MapLookuper(map[string]string{
				"PORT": freePort(t), "METRICS_PORT": "0", "DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true",
				"PROXY_PATH": path,
			}), logs, sig), nil
		}()
		stop.Stop()
		if panicked != nil {
			t.Errorf("%q: run panicked: %v", path, panicked)
			continue
		}
		out := strings.TrimSpace(logs.String())
		if code != 1 || strings.Count(out, "\n") != 0 || !strings.Contains(out, `"message":"dgrelay cannot start"`) || !strings.Contains(out, "PROXY_PATH") {
			t.Errorf("%q: exit %d, want 1 and one start error naming PROXY_PATH:\n%s", path, code, out)
		}
	}
}

// TestProxyPathAndTryPage: with TRY_PAGE=true, the page's GET routes would
// take the WebSocket's handshakes under /try, so such a PROXY_PATH stops the
// start, naming PROXY_PATH; without the page it is an ordinary path.
func TestProxyPathAndTryPage(t *testing.T) {
	for path, ok := range map[string]bool{
		"/try":        false,
		"/try/":       false,
		"/try/app.js": false,
		"/try/ws":     false,
		"/tryout":     true,
		"/ws/try":     true,
		"/Try":        true, // the mux is case-sensitive
	} {
		err := (&Config{ProxyPath: path, TryPage: true}).checkProxyPath()
		switch {
		case ok && err != nil:
			t.Errorf("%q refused: %v", path, err)
		case !ok && (err == nil || !strings.HasPrefix(err.Error(), "PROXY_PATH: ")):
			t.Errorf("%q with TRY_PAGE=true: %v, want a PROXY_PATH error", path, err)
		}
		if err := (&Config{ProxyPath: path}).checkProxyPath(); err != nil {
			t.Errorf("%q refused without the try page: %v", path, err)
		}
	}
	logs := &lockedBuffer{}
	code := run(context.Background(), envconfig.MapLookuper(map[string]string{
		"PORT": freePort(t), "METRICS_PORT": "0", "DEEPGRAM_API_KEY": testAPIKey, "ALLOW_UNAUTHENTICATED": "true",
		"TRY_PAGE": "true", "PROXY_PATH": "/try",
	}), logs, make(chan os.Signal))
	if out := logs.String(); code != 1 || !strings.Contains(out, "PROXY_PATH") || !strings.Contains(out, "TRY_PAGE") {
		t.Errorf("exit %d, want 1 with an error naming PROXY_PATH and TRY_PAGE:\n%s", code, out)
	}
}

// TestRedisURLErrors: a REDIS_URL that cannot be used stops the start with a
// reason, and never with the URL, which may hold a password.
func TestRedisURLErrors(t *testing.T) {
	for _, raw := range []string{
		"http://user:pass@redis.internal:6379",
		"redis://user:pass@redis.internal:port",
		"redis://user:pass@redis.internal:6379/not-a-db",
		"rediss://user:pass@/0",
		"redis.internal:6379",
	} {
		_, err := redisOptions(raw)
		if err == nil {
			t.Errorf("%s accepted", raw)
			continue
		}
		if strings.Contains(err.Error(), "pass") {
			t.Errorf("the error quotes the password: %v", err)
		}
	}
	for _, raw := range []string{"redis://127.0.0.1:6379", "rediss://default:pass@db.upstash.io:6379", "redis://:pass@10.0.0.3:6379/2"} {
		if _, err := redisOptions(raw); err != nil {
			t.Errorf("%s refused: %v", raw, err)
		}
	}
}
