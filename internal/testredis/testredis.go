// Package testredis runs Debian's redis-server for tests that need a real
// Redis: on a free loopback port, with no persistence, killed when the test
// ends. The relay's tests and internal/redislimits' share it. Without
// redis-server a test is skipped, saying what to install, or fails where the
// end-to-end tools are required (DGRELAY_E2E=require, or CI set), as package
// main's e2eMode says; DGRELAY_E2E=off skips it.
package testredis

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is one redis-server, started and stopped by the test that needs it.
type Server struct {
	// Port is the loopback port it listens on, the same across restarts.
	Port string

	t    testing.TB
	bin  string
	args []string
	cmd  *exec.Cmd
	exit chan struct{}
}

// Start starts a redis-server for t; extra are more of its arguments
// (--requirepass ...). Cleanup stops it.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: find(t), Port: FreePort(t), args: extra}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// URL is the server's REDIS_URL, without credentials.
func (s *Server) URL() string { return "redis://127.0.0.1:" + s.Port }

// Start runs the server (again, on the same port) and waits until it
// answers.
func (s *Server) Start() {
	s.t.Helper()
	args := append([]string{"--port", s.Port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("redis-server: %v", err)
	}
	s.exit = make(chan struct{})
	go func(cmd *exec.Cmd, exit chan struct{}) {
		_ = cmd.Wait()
		close(exit)
	}(s.cmd, s.exit)
	for deadline := time.Now().Add(10 * time.Second); !s.answers(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			s.t.Fatal("redis-server did not answer")
		}
	}
}

// answers reports whether the server answers a PING; with requirepass the
// answer is NOAUTH: up all the same.
func (s *Server) answers() bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+s.Port, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, "PING\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH")
}

// Stop kills the server, as a lost machine would go; its data goes with it.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exit
	s.cmd = nil
}

// find is redis-server's path, or the test's skip or failure as DGRELAY_E2E
// says.
func find(t testing.TB) string {
	t.Helper()
	mode := os.Getenv("DGRELAY_E2E")
	if mode == "" && os.Getenv("CI") != "" {
		mode = "require"
	}
	if mode == "off" {
		t.Skip("DGRELAY_E2E=off: end-to-end tests skipped")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if mode == "require" {
			t.Fatal("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server)")
	}
	return bin
}

// FreePort is a loopback port that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
