package main

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"time"
)

// limitsEnv turns on every per-user limit and a daily quota, each far above
// what the load reaches (all its sessions are one user, 127.0.0.1), so that
// every admission runs every check and no session is refused.
var limitsEnv = []string{
	"MAX_SESSIONS_PER_USER=1000000",
	"SESSION_RATE_PER_MINUTE=10000000",
	"MAX_USER_SECONDS_PER_DAY=1000000000",
}

// startDgrelayRedis starts a redis-server (Debian's, no persistence) on the
// load core, where the fake upstream is, so that its CPU is not counted as
// the relay's, and dgrelay with limitsEnv counted in it.
func startDgrelayRedis(dir string, up upstreamTarget) (*proxyPath, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is not installed (apt-get install redis-server)")
	}
	redis := exec.Command("taskset", "-c", loadCore, "redis-server", "--port", strconv.Itoa(port),
		"--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	stopRedis, err := startProcess(redis, dir, "redis", redisProbe(port))
	if err != nil {
		return nil, err
	}
	p, err := startDgrelay(dir, up, "dgrelay-redis", imageBuild, append([]string{"REDIS_URL=redis://127.0.0.1:" + strconv.Itoa(port)}, limitsEnv...)...)
	if err != nil {
		stopRedis()
		return nil, err
	}
	stopRelay := p.stop
	p.stop = func() { stopRelay(); stopRedis() }
	return p, nil
}

// redisProbe answers once Redis answers PING.
func redisProbe(port int) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		buf := make([]byte, 7)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "+PONG\r\n" {
			return fmt.Errorf("redis: %q %v", buf[:n], err)
		}
		return nil
	}
}
