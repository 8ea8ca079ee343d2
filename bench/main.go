// Command bench measures dgrelay side by side with nginx and a Node relay, on
// the same load in the same run, against the fake Deepgram upstream, all on
// 127.0.0.1. Every proxy runs pinned to one core; this tool (the load and the
// upstream) pins itself to the other.
//
//	go run ./bench            # the full run: a few minutes
//	go run ./bench -smoke     # seconds; CI runs it so the tool cannot rot
//	go run ./bench -quick -together 150 -paths dgrelay,dgrelay-plain,nginx
//	                          # CPU per message, every proxy loaded at once
//
// dgrelay is measured twice: built as the image does (path "dgrelay"), and
// from a plain `go build` ("dgrelay-plain"), as `go run .`, ko or a user's
// own Dockerfile would build it; neither runs with a GODEBUG.
//
// It prints one table: each figure per path and its ratio to nginx's (or
// -base's). The
// smoke run checks that every path relays correctly and asserts nothing
// about speed. The soak (dgrelay only) fails the run if sessions ended every
// way leave goroutines or descriptors behind.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
)

// The proxies run on proxyCore; the load and the upstream on loadCore.
const proxyCore, loadCore = "0", "1"

// cpuProfile, when set, saves dgrelay's CPU profile over the voice load.
var cpuProfile = flag.String("cpuprofile", "", "file for dgrelay's CPU profile during the voice load")

// scenarios picks which measurements run.
var scenarios = flag.String("scenarios", "latency,connect,ceiling,idle,voice,soak", "measurements to run")

// ratioBase is the path every other's figures are given as a ratio of.
var ratioBase = flag.String("base", "nginx", "the path the ratios are to (dgrelay-limits to see what Redis adds)")

// flagSet reports whether the command line set the flag.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func want(name string) bool { return strings.Contains(","+*scenarios+",", ","+name+",") }

// selfProfile, when set, saves this tool's own CPU profile over the direct
// path's voice load: where the load core goes.
var selfProfile = flag.String("selfprofile", "", "file for the load tool's CPU profile during the direct path's voice load")

// heapProfile, when set, saves dgrelay's heap profile with the idle sessions open.
var heapProfile = flag.String("heapprofile", "", "file for dgrelay's heap profile with the idle sessions open")

// tlsUpstream makes the fake serve wss://, as Deepgram does: every proxy then
// dials it over TLS and verifies its certificate.
var tlsUpstream = flag.Bool("tls", false, "the upstream serves wss:// (as Deepgram does) and every proxy verifies it")

// upstreamTLS is what the load trusts when it dials the TLS upstream
// directly (the direct path); set once before any measurement.
var upstreamTLS *tls.Config

// soakWorkers is how many sessions the soak keeps opening and ending at once.
const soakWorkers = 16

// proxyCores can widen the proxies' cores for experiments (-proxy-cores 0,1).
var proxyCores = flag.String("proxy-cores", proxyCore, "cores the proxies may use (taskset -c)")

// voiceSessions overrides the run's number of voice sessions: fewer leave
// the proxy idle between messages more often, which is where a runtime's
// idle-to-busy costs show.
var voiceSessions = flag.Int("voice", 0, "voice sessions (0: the run's own, 500 except in the smoke run)")

// beforeBin is a dgrelay built from another commit, measured as the path
// dgrelay-before beside this one's: a change beside what it changes.
var beforeBin = flag.String("before-bin", "", "a dgrelay binary built from another commit, run as the path dgrelay-before")

type sizes struct {
	latencyTrips int
	idle         int
	voice        int
	voiceFor     time.Duration
	connects     int
	ceilingFor   time.Duration
	soakFor      time.Duration
}

var (
	full  = sizes{latencyTrips: 5000, idle: 5000, voice: 500, voiceFor: 30 * time.Second, connects: 1000, ceilingFor: 5 * time.Second, soakFor: 30 * time.Second}
	quick = sizes{latencyTrips: 2000, idle: 2000, voice: 500, voiceFor: 10 * time.Second, connects: 300, ceilingFor: 2 * time.Second, soakFor: 10 * time.Second}
	smoke = sizes{latencyTrips: 100, idle: 50, voice: 10, voiceFor: 2 * time.Second, connects: 20, ceilingFor: 500 * time.Millisecond, soakFor: 2 * time.Second}
)

func main() {
	smokeRun := flag.Bool("smoke", false, "a short run that checks the tool and every path, and asserts nothing about speed")
	quickRun := flag.Bool("quick", false, "a shorter run for iterating (500 voice sessions for 10 s)")
	only := flag.String("paths", "direct,dgrelay,dgrelay-plain,go-floor,nginx,node", "paths to measure (also dgrelay-limits, dgrelay-redis, dgrelay-before, dgrelay-log, dgrelay-webhook)")
	flag.Parse()
	if *tlsUpstream && !flagSet("paths") {
		// go-floor relays bytes, with no TLS of its own toward the fake.
		*only = strings.Replace(*only, ",go-floor", "", 1)
	}
	if *smokeRun && !flagSet("paths") {
		// The smoke run takes every path, so that none can rot.
		*only += ",dgrelay-redis"
	}
	if os.Getenv("DGBENCH_PINNED") == "" {
		// Re-run this tool on the load core, so that the proxy's core is
		// the proxy's alone.
		exe, _ := os.Executable()
		cmd := exec.Command("taskset", append([]string{"-c", loadCore, exe}, os.Args[1:]...)...)
		cmd.Env = append(os.Environ(), "DGBENCH_PINNED=1")
		cmd.Stdout, cmd.Stderr, cmd.Stdin = os.Stdout, os.Stderr, os.Stdin
		if err := cmd.Run(); err != nil {
			os.Exit(1)
		}
		return
	}
	raiseFileLimit()
	sz := full
	if *quickRun {
		sz = quick
	}
	if *smokeRun {
		sz = smoke
	}
	if *voiceSessions > 0 {
		sz.voice = *voiceSessions
	}
	if err := run(sz, strings.Split(*only, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// raiseFileLimit lifts the descriptor limit to its hard cap: thousands of
// sessions are two sockets each, here and in every proxy (which inherit it).
func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// results holds each path's figures by row name.
type results map[string]map[string]float64

func (r results) set(row, path string, v float64) {
	if r[row] == nil {
		r[row] = map[string]float64{}
	}
	r[row][path] = v
}

func run(sz sizes, names []string) error {
	dir, err := os.MkdirTemp("", "dgbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// Lenient: the benchmark measures raw framing and load, not Deepgram's
	// protocol (its clients send no Settings).
	fake := fakedeepgram.Start(fakedeepgram.Options{TLS: *tlsUpstream, Lenient: true})
	defer fake.Close()
	up := upstreamTarget{url: fake.URL}
	if *tlsUpstream {
		up.caFile = filepath.Join(dir, "upstream-ca.pem")
		pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fake.Certificate().Raw})
		if err := os.WriteFile(up.caFile, pemCert, 0o644); err != nil {
			return err
		}
		roots := x509.NewCertPool()
		roots.AddCert(fake.Certificate())
		upstreamTLS = &tls.Config{RootCAs: roots}
	}

	var paths []*proxyPath
	for _, name := range names {
		var p *proxyPath
		var err error
		switch name {
		case "direct":
			// The floor: the load tool straight to the fake.
			p = &proxyPath{name: "direct", url: fake.URL + "/v1/agent/converse", stop: func() {}}
		case "dgrelay":
			p, err = startDgrelay(dir, up, name, imageBuild)
		case "dgrelay-plain":
			p, err = startDgrelay(dir, up, name, plainBuild)
		case "dgrelay-before":
			// A binary built elsewhere (another commit), run as the
			// others are: a change measured beside what it changes.
			if *beforeBin == "" {
				return fmt.Errorf("the dgrelay-before path needs -before-bin")
			}
			var bin string
			if bin, err = filepath.Abs(*beforeBin); err == nil {
				p, err = startDgrelay(dir, up, name, dgrelayBuild{bin: bin})
			}
		case "dgrelay-limits":
			// The per-user limits and a quota, counted on the instance.
			p, err = startDgrelay(dir, up, name, imageBuild, limitsEnv...)
		case "dgrelay-log":
			// The conversation log on: a line per text message.
			p, err = startDgrelay(dir, up, name, imageBuild, recordsEnv[name]...)
		case "dgrelay-webhook":
			// A record per session to a receiver on this machine.
			var hook *hookReceiver
			if hook, err = startHookReceiver(); err == nil {
				defer func() {
					fmt.Fprintf(os.Stderr, "dgrelay-webhook: %d session records received\n", hook.received.Load())
					hook.srv.Close()
				}()
				p, err = startDgrelay(dir, up, name, imageBuild, hook.webhookEnv()...)
			}
		case "dgrelay-redis":
			// The same limits counted in Redis.
			p, err = startDgrelayRedis(dir, up)
		case "go-floor":
			p, err = startGoFloor(dir, up)
		case "nginx":
			p, err = startNginx(dir, up)
		case "node":
			p, err = startNode(dir, up)
		default:
			return fmt.Errorf("unknown path %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer p.stop()
		paths = append(paths, p)
	}
	if *together > 0 {
		return voiceTogether(os.Stdout, paths, *together, sz.voiceFor, togetherRounds)
	}
	res := results{}
	for _, p := range paths {
		fmt.Fprintf(os.Stderr, "== %s\n", p.name)
		if err := measure(p, sz, res); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		// Every proxy must have put the key on its upstream handshakes.
		hs := fake.Handshakes()
		if got := hs[len(hs)-1].Header.Get("Authorization"); p.procs != nil && got != "Token "+benchKey {
			return fmt.Errorf("%s: the upstream handshake carried Authorization %q", p.name, got)
		}
	}
	printTable(os.Stdout, sz, paths, res)
	return nil
}

func measure(p *proxyPath, sz sizes, res results) error {
	if err := measureUnloaded(p, sz, res); err != nil {
		return err
	}
	if want("soak") && p.metricsURL != "" {
		r, err := soak(p, soakWorkers, sz.soakFor)
		if err != nil {
			return fmt.Errorf("soak: %w", err)
		}
		res.set("soak_sessions", p.name, float64(r.sessions))
		res.set("soak_goroutines", p.name, r.goroutinesAfter-r.goroutinesBefore)
		res.set("soak_fds", p.name, r.fdsAfter-r.fdsBefore)
	}
	if !want("voice") {
		return nil
	}
	v, err := voice(p, sz.voice, sz.voiceFor)
	if err != nil {
		return fmt.Errorf("voice: %w", err)
	}
	res.set("voice_probe_p99", p.name, us(v.probeP99))
	res.set("voice_up_rate", p.name, v.upRate)
	res.set("voice_down_rate", p.name, v.downRate)
	res.set("voice_load_busy", p.name, v.loadBusy*100)
	if p.procs != nil {
		cpu := us(v.cpuPerSessionSecond)
		res.set("voice_cpu_us", p.name, cpu)
		res.set("voice_cpu_msg_us", p.name, float64(v.cpuPerMessage)/float64(time.Microsecond))
		if cpu > 0 {
			res.set("sessions_per_core", p.name, 1e6/cpu)
		}
	}
	return nil
}

// measureUnloaded runs the scenarios that need no background load.
func measureUnloaded(p *proxyPath, sz sizes, res results) error {
	if want("latency") {
		for _, c := range []struct {
			row  string
			typ  websocket.MessageType
			size int
		}{{"rtt640", websocket.MessageBinary, 640}, {"rtt200", websocket.MessageText, 200}} {
			p50, p99, err := latency(p.url, c.typ, c.size, sz.latencyTrips)
			if err != nil {
				return fmt.Errorf("latency: %w", err)
			}
			res.set(c.row+"_p50", p.name, us(p50))
			res.set(c.row+"_p99", p.name, us(p99))
		}
	}
	if want("connect") {
		var before float64
		if p.procs != nil {
			before = cpuSeconds(p.procs())
		}
		p50, p99, err := connectTimes(p.url, sz.connects)
		var cpu float64
		if p.procs != nil {
			// The proxy's CPU per session opened and closed: admission,
			// both handshakes, the session's start and end.
			cpu = (cpuSeconds(p.procs()) - before) * 1e6 / float64(sz.connects)
		}
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		res.set("connect_p50", p.name, us(p50))
		res.set("connect_p99", p.name, us(p99))
		if cpu > 0 {
			res.set("connect_cpu_us", p.name, cpu)
		}
	}
	if want("ceiling") {
		mbs, err := ceiling(p.url, sz.ceilingFor)
		if err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
		res.set("ceiling", p.name, mbs)
	}
	if want("idle") && p.procs != nil {
		idle, err := idleMemory(p, sz.idle)
		if err != nil {
			return fmt.Errorf("idle: %w", err)
		}
		res.set("idle_kb", p.name, idle.bytesPerSession/1024)
		res.set("idle_talk_kb", p.name, idle.afterTalkPerSession/1024)
		if p.goroutines != nil {
			res.set("goroutines", p.name, idle.goroutinesPerSession)
			res.set("idle_heap_kb", p.name, idle.heapPerSession/1024)
			res.set("idle_stack_kb", p.name, idle.stackPerSession/1024)
			res.set("idle_talk_heap_kb", p.name, idle.afterTalkHeapPerSession/1024)
		}
	}
	return nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// printTable writes the results as Markdown: a column per path, and for the
// proxies each figure's ratio to nginx's. Latencies are added latencies
// (the path's minus the direct path's), where direct was measured.
func printTable(w *os.File, sz sizes, paths []*proxyPath, res results) {
	fmt.Fprintf(w, "\nmachine: %s CPUs (%s), %s, %s/%s; proxies pinned to core %s, load and upstream to core %s\n",
		onlineCPUs(), cpuModel(), kernel(), runtime.GOOS, runtime.GOARCH, *proxyCores, loadCore)
	scheme := "ws:// (plain TCP)"
	if *tlsUpstream {
		scheme = "wss:// (TLS, certificate verified by every proxy)"
	}
	fmt.Fprintf(w, "upstream: the fake Deepgram over %s\n", scheme)
	fmt.Fprintf(w, "load: %d round trips per latency row, %d idle sessions, %d voice sessions for %s, %d connects, 64 KiB frames for %s\n\n",
		sz.latencyTrips, sz.idle, sz.voice, sz.voiceFor, sz.connects, sz.ceilingFor)
	header := "| figure |"
	rule := "|---|"
	for _, p := range paths {
		header += " " + p.name + " |"
		rule += "---|"
	}
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, rule)
	rows := []struct {
		key, label string
		added      bool // subtract the direct path
		lowerWins  bool
	}{
		{"rtt640_p50", "added round trip, 640 B binary, p50 (µs)", true, true},
		{"rtt640_p99", "added round trip, 640 B binary, p99 (µs)", true, true},
		{"rtt200_p50", "added round trip, 200 B text, p50 (µs)", true, true},
		{"rtt200_p99", "added round trip, 200 B text, p99 (µs)", true, true},
		{"idle_kb", "idle memory per session (KiB)", false, true},
		{"idle_heap_kb", "of which Go heap in use (KiB)", false, true},
		{"idle_stack_kb", "of which goroutine stacks (KiB)", false, true},
		{"goroutines", "goroutines per idle session", false, true},
		{"idle_talk_kb", "idle memory per session after a 16 KiB message each way (KiB)", false, true},
		{"idle_talk_heap_kb", "of which Go heap in use (KiB)", false, true},
		{"voice_cpu_us", "CPU per voice session-second (µs)", false, true},
		{"voice_cpu_msg_us", "CPU per message relayed under the voice load (µs)", false, true},
		{"sessions_per_core", "voice sessions per core", false, false},
		{"voice_probe_p99", "added round trip under voice load, p99 (µs)", true, true},
		{"voice_up_rate", "voice load achieved, up (msg/s)", false, false},
		{"voice_down_rate", "voice load achieved, down (msg/s)", false, false},
		{"voice_load_busy", "load core busy during the voice load (%)", false, false},
		{"connect_p50", "connect to Welcome, p50 (µs)", false, true},
		{"connect_p99", "connect to Welcome, p99 (µs)", false, true},
		{"connect_cpu_us", "CPU per session opened and closed (µs)", false, true},
		{"ceiling", "64 KiB frames, one way (MB/s)", false, false},
		{"soak_sessions", "soak: sessions opened and ended six ways", false, false},
		{"soak_goroutines", "soak: goroutines left after it (0: none leaked)", false, true},
		{"soak_fds", "soak: open descriptors left after it", false, true},
	}
	for _, row := range rows {
		vals := res[row.key]
		if vals == nil {
			continue
		}
		line := "| " + row.label + " |"
		base, hasBase := vals[*ratioBase]
		if row.added {
			base -= vals["direct"]
		}
		for _, p := range paths {
			v, ok := vals[p.name]
			switch {
			case !ok:
				line += " - |"
				continue
			case row.added && p.name == "direct":
				line += fmt.Sprintf(" %.0f (floor) |", v)
				continue
			case row.added:
				v -= vals["direct"]
			}
			cell := format(v)
			if hasBase && p.name != "direct" && p.name != *ratioBase && base != 0 {
				cell += fmt.Sprintf(" (%.2f×)", v/base)
			}
			line += " " + cell + " |"
		}
		fmt.Fprintln(w, line)
	}
}

func format(v float64) string {
	if v != 0 && v < 10 && v > -10 {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

// onlineCPUs is the machine's CPUs, not this pinned process's share.
func onlineCPUs() string {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return "?"
	}
	return "online " + strings.TrimSpace(string(b))
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown kernel"
	}
	return "Linux " + strings.TrimSpace(string(b))
}
