package main

import (
	"context"
	goversion "go/version"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/BurntSushi/toml"
	"github.com/sethvargo/go-envconfig"
	"go.yaml.in/yaml/v3"
)

// These tests hold the deploy files against the code, since no Docker engine
// or cloud account runs here: a port, a variable name or a timeout that
// drifts apart fails here instead of in a user's deploy.

type flyConfig struct {
	KillSignal  string `toml:"kill_signal"`
	KillTimeout string `toml:"kill_timeout"`
	Deploy      struct {
		Strategy    string `toml:"strategy"`
		WaitTimeout string `toml:"wait_timeout"`
	} `toml:"deploy"`
	Env         map[string]string `toml:"env"`
	HTTPService struct {
		InternalPort     int    `toml:"internal_port"`
		ForceHTTPS       bool   `toml:"force_https"`
		AutoStopMachines string `toml:"auto_stop_machines"`
		Concurrency      struct {
			Type      string `toml:"type"`
			SoftLimit int    `toml:"soft_limit"`
			HardLimit int    `toml:"hard_limit"`
		} `toml:"concurrency"`
		Checks []struct {
			Method string `toml:"method"`
			Path   string `toml:"path"`
		} `toml:"checks"`
	} `toml:"http_service"`
	Metrics struct {
		Port int    `toml:"port"`
		Path string `toml:"path"`
	} `toml:"metrics"`
	VM []struct {
		Size string `toml:"size"`
	} `toml:"vm"`
}

// voiceSessionsPerCore is how many of the benchmark's voice calls one core
// carried over TLS (BENCHMARKS.md: 709-738; the lower). A deploy file may
// promise at most two thirds of it per core the platform gives: beyond the
// core, every call's audio waits.
const voiceSessionsPerCore = 709

// maxSessionsFor is the most MAX_SESSIONS a machine of cores may be given.
func maxSessionsFor(cores float64) int {
	return int(cores * voiceSessionsPerCore * 2 / 3)
}

// flyCores is the share of a core a Fly VM size runs: a shared vCPU gets
// 5 ms in every 80, a performance vCPU all of it.
func flyCores(size string) (float64, bool) {
	for prefix, share := range map[string]float64{"shared-cpu-": 1.0 / 16, "performance-": 1} {
		if rest, ok := strings.CutPrefix(size, prefix); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(rest, "x"))
			return float64(n) * share, err == nil && n > 0
		}
	}
	return 0, false
}

// envNames is every variable the Config struct reads.
func envNames() map[string]bool {
	names := map[string]bool{}
	t := reflect.TypeFor[Config]()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("env"), ",")
		names[name] = true
	}
	return names
}

// configFrom loads the Config a deploy's environment produces.
func configFrom(t *testing.T, env map[string]string) *Config {
	t.Helper()
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(env))
	if err != nil {
		t.Fatalf("the deploy's environment is not a valid configuration: %v", err)
	}
	return cfg
}

func TestFlyToml(t *testing.T) {
	var fly flyConfig
	if _, err := toml.DecodeFile("fly.toml", &fly); err != nil {
		t.Fatal(err)
	}
	for name := range fly.Env {
		if !envNames()[name] {
			t.Errorf("fly.toml [env] sets %s, which dgrelay does not read", name)
		}
	}
	if _, ok := fly.Env["REDIS_URL"]; ok {
		t.Error("fly.toml [env] sets REDIS_URL, which holds a password: fly secrets set it")
	}
	cfg := configFrom(t, fly.Env)
	if fly.HTTPService.InternalPort != cfg.Port {
		t.Errorf("internal_port %d, but dgrelay listens on %d", fly.HTTPService.InternalPort, cfg.Port)
	}
	if fly.Metrics.Port != cfg.MetricsPort || fly.Metrics.Path != "/metrics" {
		t.Errorf("[metrics] %d%s, but dgrelay serves :%d/metrics", fly.Metrics.Port, fly.Metrics.Path, cfg.MetricsPort)
	}
	if fly.KillSignal != "SIGTERM" {
		t.Errorf("kill_signal %q, want SIGTERM", fly.KillSignal)
	}
	kill, err := time.ParseDuration(fly.KillTimeout)
	if err != nil || kill < cfg.DrainTimeout+stopTail+time.Second || kill > 300*time.Second {
		t.Errorf("kill_timeout %q must exceed DRAIN_TIMEOUT %s and the %s after it by a second, and stay within Fly's 300s", fly.KillTimeout, cfg.DrainTimeout, stopTail)
	}
	if fly.Deploy.Strategy != "bluegreen" {
		t.Errorf("deploy strategy %q: a rolling deploy stops the machine before its replacement takes calls", fly.Deploy.Strategy)
	}
	if wait, err := time.ParseDuration(fly.Deploy.WaitTimeout); err != nil || wait <= kill {
		t.Errorf("wait_timeout %q must outlast kill_timeout %q, or the deploy gives up on the draining machines", fly.Deploy.WaitTimeout, fly.KillTimeout)
	}
	c := fly.HTTPService.Concurrency
	if c.Type != "connections" || c.HardLimit != cfg.MaxSessions || c.SoftLimit <= 0 || c.SoftLimit > c.HardLimit {
		t.Errorf("concurrency %+v: want connections with hard_limit = MAX_SESSIONS (%d)", c, cfg.MaxSessions)
	}
	if len(fly.VM) != 1 {
		t.Fatalf("%d [[vm]] sections, want one", len(fly.VM))
	}
	if cores, ok := flyCores(fly.VM[0].Size); !ok || cfg.MaxSessions > maxSessionsFor(cores) {
		t.Errorf("MAX_SESSIONS %d on a %s (%.3g of a core): at most %d calls fit", cfg.MaxSessions, fly.VM[0].Size, cores, maxSessionsFor(cores))
	}
	if cfg.TrustProxyHeaders != proxyFly {
		t.Errorf("TRUST_PROXY_HEADERS %q: on Fly the client address is Fly-Client-IP (fly)", cfg.TrustProxyHeaders)
	}
	if !fly.HTTPService.ForceHTTPS {
		t.Error("force_https is off: tokens would cross the internet in clear")
	}
	if fly.HTTPService.AutoStopMachines != "off" {
		t.Errorf("auto_stop_machines %q stops machines with live calls", fly.HTTPService.AutoStopMachines)
	}
	if len(fly.HTTPService.Checks) == 0 {
		t.Fatal("no health check")
	}
	h := newHarness(t, fly.Env, fakedeepgram.Options{})
	for _, check := range fly.HTTPService.Checks {
		if resp := get(t, h.srv.URL+check.Path, nil); check.Method != "GET" || resp.StatusCode != 200 || check.Path != "/readyz" {
			t.Errorf("health check %s %s: status %d; want GET /readyz", check.Method, check.Path, resp.StatusCode)
		}
	}
}

type cloudBuild struct {
	Substitutions map[string]string `yaml:"substitutions"`
	Steps         []struct {
		ID         string   `yaml:"id"`
		Name       string   `yaml:"name"`
		Entrypoint string   `yaml:"entrypoint"`
		Args       []string `yaml:"args"`
		Env        []string `yaml:"env"`
		WaitFor    []string `yaml:"waitFor"`
	} `yaml:"steps"`
	Images []string `yaml:"images"`
}

// substitute expands ${_NAME} and ${PROJECT_ID}-style references as Cloud
// Build would, with the file's defaults.
func (cb cloudBuild) substitute(s string) string {
	return regexp.MustCompile(`\$\{(\w+)\}`).ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if v, ok := cb.Substitutions[name]; ok {
			return v
		}
		return map[string]string{"PROJECT_ID": "my-project", "BUILD_ID": "build-1"}[name]
	})
}

func TestCloudBuild(t *testing.T) {
	raw, err := os.ReadFile("cloudbuild.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cb cloudBuild
	if err := yaml.Unmarshal(raw, &cb); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"_REGION", "_REPOSITORY", "_SERVICE", "_SECRET", "_SERVICE_ACCOUNT"} {
		if cb.Substitutions[name] == "" {
			t.Errorf("substitution %s has no default", name)
		}
	}
	var deploy []string
	for _, s := range cb.Steps {
		if s.Entrypoint == "gcloud" && len(s.Args) > 2 && s.Args[0] == "run" && s.Args[1] == "deploy" {
			for _, a := range s.Args {
				deploy = append(deploy, cb.substitute(a))
			}
		}
	}
	if deploy == nil {
		t.Fatal("no gcloud run deploy step")
	}
	flags := map[string]string{}
	for _, a := range deploy[2:] {
		if k, v, ok := strings.Cut(a, "="); ok {
			flags[k] = v
		} else {
			flags[a] = ""
		}
	}
	env := map[string]string{}
	if vars, ok := strings.CutPrefix(flags["--set-env-vars"], "^|^"); ok {
		for _, kv := range strings.Split(vars, "|") {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	} else {
		t.Fatal(`--set-env-vars must use the "^|^" separator (values hold commas)`)
	}
	for name := range env {
		if !envNames()[name] {
			t.Errorf("cloudbuild.yaml sets %s, which dgrelay does not read", name)
		}
	}
	// An HS256 secret kept in Secret Manager goes by its version name.
	if _, ok := cb.Substitutions["_JWT_SECRET"]; !ok || !strings.Contains(string(raw), "|JWT_SECRET_SECRET=${_JWT_SECRET}|") {
		t.Error("no _JWT_SECRET substitution passing a Secret Manager version as JWT_SECRET_SECRET")
	}
	if _, ok := env["REDIS_URL"]; ok {
		t.Error("cloudbuild.yaml sets REDIS_URL as a plain variable: it holds a password, so --set-secrets it")
	}
	if !secretVersionName.MatchString(env["DEEPGRAM_API_KEY_SECRET"]) {
		t.Errorf("DEEPGRAM_API_KEY_SECRET %q is not a secret version name", env["DEEPGRAM_API_KEY_SECRET"])
	}
	env["DEEPGRAM_API_KEY_SECRET"] = "" // read at start on Cloud Run; the config check needs no key
	cfg := configFrom(t, env)
	if flags["--port"] != strconv.Itoa(cfg.Port) {
		t.Errorf("--port %s, but dgrelay listens on %d", flags["--port"], cfg.Port)
	}
	if env["GOOGLE_CLOUD_PROJECT"] != "my-project" { // ${PROJECT_ID}, substituted
		t.Errorf("GOOGLE_CLOUD_PROJECT %q: session log lines carry their trace only with the project's id", env["GOOGLE_CLOUD_PROJECT"])
	}
	if cfg.TrustProxyHeaders != proxyCloudRun {
		t.Errorf("TRUST_PROXY_HEADERS %q: on Cloud Run the client address is X-Forwarded-For's last (cloudrun)", cfg.TrustProxyHeaders)
	}
	if flags["--timeout"] != "3600" {
		t.Errorf("--timeout %s: a WebSocket lives at most as long as the request, so use Cloud Run's 3600", flags["--timeout"])
	}
	if cpus, err := strconv.ParseFloat(flags["--cpu"], 64); err != nil || cfg.MaxSessions > maxSessionsFor(cpus) {
		t.Errorf("MAX_SESSIONS %d with --cpu=%q: at most %d calls fit", cfg.MaxSessions, flags["--cpu"], maxSessionsFor(cpus))
	}
	if flags["--concurrency"] != strconv.Itoa(cfg.MaxSessions) {
		t.Errorf("--concurrency %s, MAX_SESSIONS %d", flags["--concurrency"], cfg.MaxSessions)
	}
	if _, ok := flags["--session-affinity"]; !ok {
		t.Error("no --session-affinity")
	}
	if !strings.HasSuffix(flags["--service-account"], ".iam.gserviceaccount.com") {
		t.Errorf("--service-account %q", flags["--service-account"])
	}
	// Cloud Run sends SIGKILL 10 s after SIGTERM: the drain and the most the
	// exit takes after it (stopTail) must leave a second of it.
	if cfg.DrainTimeout+stopTail > 9*time.Second {
		t.Errorf("DRAIN_TIMEOUT %s and the %s after it leave less than 1 s of Cloud Run's 10 s", cfg.DrainTimeout, stopTail)
	}
	if len(cb.Images) != 1 || !strings.HasPrefix(flags["--image"], cb.substitute(cb.Images[0])) {
		t.Errorf("the deployed image %s is not the one built and pushed %v", flags["--image"], cb.Images)
	}
}

func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	modGo := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(gomod))
	dockerGo := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindStringSubmatch(df)
	if modGo == nil || dockerGo == nil {
		t.Fatal("cannot find the Go versions in go.mod and the Dockerfile")
	}
	if goversion.Compare("go"+dockerGo[1], "go"+modGo[1]) < 0 {
		t.Errorf("the Dockerfile builds with Go %s, older than go.mod's %s", dockerGo[1], modGo[1])
	}
	for _, want := range []string{
		"FROM golang:${GO_VERSION}",
		"CGO_ENABLED=0",
		"-trimpath",
		`-ldflags "-s -w -X main.version=${VERSION}"`,
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER 65532:65532",
		`ENTRYPOINT ["/dgrelay"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("the Dockerfile lacks %s", want)
		}
	}
	// The relay is as fast however it is built: the image sets no GODEBUG
	// (the benchmark's image path runs without one, beside a plain go
	// build), so that no packaging carries a speed the others lack.
	if regexp.MustCompile(`(?m)^ENV\b.*\bGODEBUG\b`).MatchString(df) {
		t.Error("the Dockerfile sets GODEBUG; the benchmark measures the image without one")
	}
	cfg := configFrom(t, nil)
	if !regexp.MustCompile(`(?m)^EXPOSE .*\b` + strconv.Itoa(cfg.Port) + `\b.*\b` + strconv.Itoa(cfg.MetricsPort) + `\b`).MatchString(df) {
		t.Errorf("EXPOSE does not name PORT %d and METRICS_PORT %d", cfg.Port, cfg.MetricsPort)
	}
	// No secret in any layer: no ENV or ARG that names a key or a secret.
	for _, line := range strings.Split(df, "\n") {
		if (strings.HasPrefix(line, "ENV") || strings.HasPrefix(line, "ARG")) && regexp.MustCompile(`(?i)KEY|SECRET|TOKEN`).MatchString(line) {
			t.Errorf("a secret in a layer: %s", line)
		}
	}
	ignore, err := os.ReadFile(".dockerignore")
	if err != nil {
		t.Fatal("no .dockerignore")
	}
	entries := strings.Fields(string(ignore))
	for _, keep := range []string{".git", ".env", ".env.*"} {
		if !slices.Contains(entries, keep) {
			t.Errorf(".dockerignore does not keep %s out of the build context", keep)
		}
	}
	gitignore, err := os.ReadFile(".gitignore")
	if err != nil || !slices.Contains(strings.Fields(string(gitignore)), ".env") {
		t.Error(".gitignore does not keep a local .env (it holds the key) out of the repository")
	}
}

// readmeCommands is every shell command in the section's sh blocks, with its
// continuation lines joined and comments dropped.
func readmeCommands(section string) [][]string {
	var cmds [][]string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1) {
		joined := strings.ReplaceAll(block[1], "\\\n", " ")
		for _, line := range strings.Split(joined, "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				// The commands quote only values without spaces.
				cmds = append(cmds, strings.Fields(strings.ReplaceAll(line, `"`, "")))
			}
		}
	}
	return cmds
}

// flagValues maps a command's --flags to their values (either --f=v or --f v).
func flagValues(words []string) map[string]string {
	flags := map[string]string{}
	for i := 0; i < len(words); i++ {
		name, value, ok := strings.Cut(words[i], "=")
		if !strings.HasPrefix(name, "--") {
			continue
		}
		if !ok && i+1 < len(words) && !strings.HasPrefix(words[i+1], "--") {
			value = words[i+1]
			i++
		}
		flags[name] = value
	}
	return flags
}

// TestReadmeRedisSetup holds docs/limits.md's Redis setup to the code: every
// variable its commands set is one dgrelay reads, REDIS_URL goes only as a
// secret, Cloud Run reaches Memorystore through Direct VPC egress for
// private ranges, the deploy keeps the sizing of cloudbuild.yaml, and
// Upstash is created without eviction.
func TestReadmeRedisSetup(t *testing.T) {
	section := docSection(t, "docs/limits.md", "Limits across instances (Redis)")
	var deploy map[string]string
	flySecrets := map[string]bool{}
	createdRedis := false
	for _, words := range readmeCommands(section) {
		switch {
		case len(words) > 3 && words[0] == "gcloud" && words[1] == "run" && words[2] == "deploy":
			deploy = flagValues(words)
		case len(words) > 3 && words[0] == "fly" && words[1] == "secrets" && words[2] == "set":
			for _, kv := range words[3:] {
				name, _, _ := strings.Cut(kv, "=")
				flySecrets[name] = true
			}
		case len(words) > 2 && words[0] == "fly" && words[1] == "redis" && words[2] == "create":
			createdRedis = true
			if _, ok := flagValues(words)["--disable-eviction"]; !ok {
				t.Error("fly redis create without --disable-eviction: Upstash could evict the counts")
			}
		}
	}
	if deploy == nil || !createdRedis {
		t.Fatal("the section lacks the gcloud run deploy or the fly redis create")
	}
	if deploy["--network"] == "" || deploy["--subnet"] == "" || deploy["--vpc-egress"] != "private-ranges-only" {
		t.Errorf("Cloud Run reaches Memorystore through Direct VPC egress: --network %q --subnet %q --vpc-egress %q",
			deploy["--network"], deploy["--subnet"], deploy["--vpc-egress"])
	}
	secrets := map[string]bool{}
	for _, kv := range strings.Split(deploy["--set-secrets"], ",") {
		name, _, _ := strings.Cut(kv, "=")
		secrets[name] = true
	}
	env := map[string]string{}
	vars, ok := strings.CutPrefix(deploy["--set-env-vars"], "^|^")
	if !ok {
		t.Fatal(`--set-env-vars must use the "^|^" separator`)
	}
	for _, kv := range strings.Split(vars, "|") {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	for name := range env {
		if !envNames()[name] {
			t.Errorf("the Cloud Run deploy sets %s, which dgrelay does not read", name)
		}
	}
	for name := range secrets {
		if !envNames()[name] {
			t.Errorf("the Cloud Run deploy sets the secret %s, which dgrelay does not read", name)
		}
	}
	for name := range flySecrets {
		if !envNames()[name] {
			t.Errorf("fly secrets set %s, which dgrelay does not read", name)
		}
	}
	if !secrets["REDIS_URL"] || !flySecrets["REDIS_URL"] || env["REDIS_URL"] != "" {
		t.Error("REDIS_URL holds a password: it must be set as a secret on both platforms, never as a plain variable")
	}
	if deploy["--timeout"] != "3600" || deploy["--concurrency"] != env["MAX_SESSIONS"] || deploy["--cpu"] != "1" {
		t.Errorf("the deploy's sizing (--timeout %s, --cpu %s, --concurrency %s, MAX_SESSIONS %s) is not cloudbuild.yaml's",
			deploy["--timeout"], deploy["--cpu"], deploy["--concurrency"], env["MAX_SESSIONS"])
	}
	for _, flag := range []string{"`--network=default`", "`--subnet=default`", "`--vpc-egress=private-ranges-only`", "`--set-secrets=REDIS_URL=redis-url:latest`"} {
		if !strings.Contains(section, flag) {
			t.Errorf("the cloudbuild.yaml note lacks %s", flag)
		}
	}
}
