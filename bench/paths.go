package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// benchKey is the "Deepgram key" every proxy sends to the fake upstream.
const benchKey = "bench-key-not-a-secret"

// upstreamTarget is the fake Deepgram every path leads to.
type upstreamTarget struct {
	url string // ws:// or wss://, with no path
	// caFile is the PEM of its certificate when it serves TLS, which every
	// proxy is told to trust; "" for ws://.
	caFile string
}

// proxyPath is one way from a client to the fake upstream.
type proxyPath struct {
	name string
	// url is the WebSocket URL a client dials (without query).
	url string
	// procs returns the processes whose CPU and memory are the proxy's;
	// nil for the direct path.
	procs func() []int
	// goroutines reads the proxy's goroutine count (dgrelay only).
	goroutines func() (float64, error)
	// gauge reads one of the proxy's Prometheus gauges (dgrelay only).
	gauge func(name string) (float64, error)
	// profileURL serves a CPU profile (dgrelay with ENABLE_PPROF only).
	profileURL string
	// metricsURL is the proxy's Prometheus endpoint (dgrelay only).
	metricsURL string
	stop       func()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// pinned runs a command on the proxy's core, so the proxy's figures are not
// mixed with the load's.
func pinned(name string, args ...string) *exec.Cmd {
	return exec.Command("taskset", append([]string{"-c", *proxyCores, name}, args...)...)
}

// startProcess starts cmd with its output in dir/log and waits until probe
// answers.
func startProcess(cmd *exec.Cmd, dir, label string, probe func() error) (func(), error) {
	logf, err := os.Create(filepath.Join(dir, label+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if probe() == nil {
			return stop, nil
		}
		select {
		case <-exited:
			logf.Close()
			out, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("%s exited at start:\n%s", label, out)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("%s did not come up", label)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tcpProbe(port int) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// dgrelayBuild is one way dgrelay gets built and run: as the image does, or
// as `go build` and `go run` do, which is how most people who do not use the
// image will run it (a Kubernetes manifest, ko, their own Dockerfile, a
// buildpack). Both are measured, so that the speed cannot hang on the image.
type dgrelayBuild struct {
	// bin is the binary's name in the run's directory, or the path of
	// one built elsewhere.
	bin string
	// flags and env are the build's arguments and environment.
	flags, env []string
}

var (
	// imageBuild is the Dockerfile's build: static, no cgo, stripped.
	imageBuild = dgrelayBuild{
		bin:   "dgrelay",
		flags: []string{"-trimpath", "-ldflags", "-s -w"},
		env:   []string{"CGO_ENABLED=0"},
	}
	// plainBuild is `go build` with the machine's defaults (cgo where a C
	// compiler is installed, symbols kept).
	plainBuild = dgrelayBuild{bin: "dgrelay-plain"}
)

// withoutGODEBUG is env with no GODEBUG in it: neither build runs with one
// (the image sets none), and a shell's own must not reach them and change
// what is measured.
func withoutGODEBUG(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			out = append(out, kv)
		}
	}
	return out
}

// startDgrelay builds the relay as b says (once per run) and runs it as the
// path name, with extra variables after the benchmark's own.
func startDgrelay(dir string, up upstreamTarget, name string, b dgrelayBuild, extra ...string) (*proxyPath, error) {
	bin := b.bin
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(dir, b.bin)
	}
	if _, err := os.Stat(bin); err != nil {
		build := exec.Command("go", append(append([]string{"build"}, b.flags...), "-o", bin, ".")...)
		build.Env = append(withoutGODEBUG(os.Environ()), b.env...)
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	mport, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := pinned(bin)
	cmd.Env = append(withoutGODEBUG(os.Environ()),
		"PORT="+strconv.Itoa(port),
		"METRICS_PORT="+strconv.Itoa(mport),
		"DEEPGRAM_API_KEY="+benchKey,
		"DEEPGRAM_AGENT_URL="+up.url+"/v1/agent/converse",
		"ALLOW_UNAUTHENTICATED=true",
		"MAX_SESSIONS=100000",
		"MAX_SESSIONS_PER_USER=0",
		"SESSION_RATE_PER_MINUTE=0",
		"IDLE_TIMEOUT=0",
		"DRAIN_TIMEOUT=0s",
		"ENABLE_PPROF=true",
	)
	// A variable given twice takes its last value.
	cmd.Env = append(cmd.Env, extra...)
	if up.caFile != "" {
		// Go's roots on Linux: the file replaces the system bundle.
		cmd.Env = append(cmd.Env, "SSL_CERT_FILE="+up.caFile)
	}
	stop, err := startProcess(cmd, dir, name, tcpProbe(port))
	if err != nil {
		return nil, err
	}
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	return &proxyPath{
		name:  name,
		url:   fmt.Sprintf("ws://127.0.0.1:%d/ws/deepgram-proxy/", port),
		procs: func() []int { return processTree(cmd.Process.Pid) },
		goroutines: func() (float64, error) {
			return scrapeGauge(metrics, "go_goroutines")
		},
		gauge:      func(name string) (float64, error) { return scrapeGauge(metrics, name) },
		profileURL: fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile", mport),
		metricsURL: metrics,
		stop:       stop,
	}, nil
}

// nginxConf is nginx as a WebSocket proxy that injects the Authorization
// header: the C baseline users know. One worker, so it uses one core as
// dgrelay does.
const nginxConf = `daemon off;
worker_processes 1;
worker_rlimit_nofile 40000;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 40000; use epoll; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen 127.0.0.1:%[2]d;
    location / {
      proxy_pass %[3]s;%[5]s
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Authorization "Token %[4]s";
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
    }
  }
}
`

// nginxTLS verifies a TLS upstream as dgrelay does (the fake's certificate
// names example.com and 127.0.0.1; nginx checks names only) and reuses TLS
// sessions, which is nginx's default.
const nginxTLS = `
      proxy_ssl_server_name on;
      proxy_ssl_name example.com;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate %s;
      proxy_ssl_session_reuse on;`

func startNginx(dir string, up upstreamTarget) (*proxyPath, error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/nginx"); statErr != nil {
			return nil, fmt.Errorf("nginx is not installed (apt-get install nginx-light)")
		}
		nginx = "/usr/sbin/nginx"
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	target, tlsConf := "http"+strings.TrimPrefix(up.url, "ws"), ""
	if up.caFile != "" {
		tlsConf = fmt.Sprintf(nginxTLS, up.caFile)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, port, target, benchKey, tlsConf)), 0o644); err != nil {
		return nil, err
	}
	cmd := pinned(nginx, "-c", conf, "-p", dir)
	stop, err := startProcess(cmd, dir, "nginx", tcpProbe(port))
	if err != nil {
		return nil, err
	}
	return processPath("nginx", port, cmd, stop), nil
}

// startGoFloor runs bench/gofloor, the least a Go relay with two goroutines
// per session can do (its doc says what it leaves out): what it costs over
// nginx is the Go scheduler's share, which bounds what dgrelay can reach.
func startGoFloor(dir string, up upstreamTarget) (*proxyPath, error) {
	if up.caFile != "" {
		return nil, fmt.Errorf("go-floor relays ws:// only")
	}
	bin := filepath.Join(dir, "go-floor")
	if _, err := os.Stat(bin); err != nil {
		build := exec.Command("go", "build", "-o", bin, "./bench/gofloor")
		build.Env = withoutGODEBUG(os.Environ())
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := pinned(bin)
	cmd.Env = append(withoutGODEBUG(os.Environ()), "PORT="+strconv.Itoa(port),
		"UPSTREAM="+strings.TrimPrefix(up.url, "ws://"), "KEY="+benchKey)
	stop, err := startProcess(cmd, dir, "go-floor", tcpProbe(port))
	if err != nil {
		return nil, err
	}
	return processPath("go-floor", port, cmd, stop), nil
}

func startNode(dir string, up upstreamTarget) (*proxyPath, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("node is not installed")
	}
	relayDir, err := filepath.Abs(filepath.Join("bench", "node-relay"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(relayDir, "node_modules")); err != nil {
		npm := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		npm.Dir = relayDir
		if out, err := npm.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := pinned(node, filepath.Join(relayDir, "relay.mjs"))
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "UPSTREAM="+up.url, "DEEPGRAM_API_KEY="+benchKey)
	if up.caFile != "" {
		cmd.Env = append(cmd.Env, "NODE_EXTRA_CA_CERTS="+up.caFile)
	}
	stop, err := startProcess(cmd, dir, "node", tcpProbe(port))
	if err != nil {
		return nil, err
	}
	return processPath("node", port, cmd, stop), nil
}

// processPath is a proxy other than dgrelay, run as cmd and serving the
// agent route on port.
func processPath(name string, port int, cmd *exec.Cmd, stop func()) *proxyPath {
	return &proxyPath{
		name:  name,
		url:   fmt.Sprintf("ws://127.0.0.1:%d/v1/agent/converse", port),
		procs: func() []int { return processTree(cmd.Process.Pid) },
		stop:  stop,
	}
}

// processTree is pid and all its descendants (taskset execs in place, nginx
// forks its worker).
func processTree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 {
			ppid, _ := strconv.Atoi(fields[1])
			children[ppid] = append(children[ppid], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// cpuSeconds is the user+system CPU time the processes have used.
func cpuSeconds(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		// fields[11] and [12] are utime and stime (the 14th and 15th of the line).
		ut, _ := strconv.ParseFloat(fields[11], 64)
		st, _ := strconv.ParseFloat(fields[12], 64)
		total += (ut + st) / clockTicks
	}
	return total
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// rssBytes is the processes' resident memory.
func rssBytes(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				total += kb * 1024
			}
		}
		f.Close()
	}
	return total
}

func scrapeGauge(url, name string) (float64, error) {
	lines, err := metricLines(url)
	if err != nil {
		return 0, err
	}
	for _, line := range lines {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s not in %s", name, url)
}

// metricLines fetches a Prometheus text endpoint, line by line.
func metricLines(url string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}

// saveProfile fetches a profile from url into file; seconds > 0 asks for
// a CPU profile over that long.
func saveProfile(url string, seconds int, file string) error {
	if seconds > 0 {
		url = fmt.Sprintf("%s?seconds=%d", url, seconds)
	}
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	defer out.Close()
	_, err = io.Copy(out, resp.Body)
	return err
}
