// Command gofloor is the least a Go relay with two goroutines per session can
// do, measured beside dgrelay and nginx as the bench's go-floor path: it
// adds the key to the upgrade request, then relays raw bytes both ways with
// no frame read, no limit, no metric and no care for how a session ends.
// Each direction waits on its socket through the runtime's poller, reads with
// one recvfrom until a short read and sends with one sendto on a descriptor
// it holds, as dgrelay's pipe does at best. It is not a relay to use: a
// hangup that comes with the last bytes goes unseen, and a descriptor is
// written without the net package's reference count. What it costs per
// message over nginx is the Go scheduler's share, which no code on top of
// goroutines can remove.
//
// Usage: PORT=8080 UPSTREAM=127.0.0.1:9000 KEY=... gofloor
package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	upstream, key := os.Getenv("UPSTREAM"), os.Getenv("KEY")
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serve(c.(*net.TCPConn), upstream, key)
	}
}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// serve passes the upgrade request on with the key, then relays.
func serve(c *net.TCPConn, upstream, key string) {
	defer c.Close()
	var head []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		head = append(head, buf[:n]...)
	}
	line := bytes.IndexByte(head, '\n') + 1
	req := append(append(append([]byte{}, head[:line]...), "Authorization: Token "+key+"\r\n"...), head[line:]...)
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	if _, err := up.Write(req); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		relay(up, c)
		close(done)
	}()
	relay(c, up)
	c.Close()
	up.Close()
	<-done
}

// relay copies src to dst until src ends or a write fails.
func relay(src, dst *net.TCPConn) {
	rs, _ := src.SyscallConn()
	rd, _ := dst.SyscallConn()
	var dfd uintptr
	_ = rd.Control(func(fd uintptr) { dfd = fd })
	var pending []byte
	failed := false
	writable := func(fd uintptr) bool {
		pending = sendAll(fd, pending, &failed)
		return failed || len(pending) == 0
	}
	_ = rs.Read(func(fd uintptr) bool {
		bp := buffers.Get().(*[]byte)
		defer buffers.Put(bp)
		for {
			n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&(*bp)[0])), uintptr(len(*bp)), 0, 0, 0)
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				return false
			case errno != 0 || n == 0:
				return true
			}
			if pending = sendAll(dfd, (*bp)[:n], &failed); len(pending) > 0 && !failed {
				_ = rd.Write(writable)
			}
			if failed {
				return true
			}
			if int(n) < len(*bp) {
				return false
			}
		}
	})
}

func sendAll(fd uintptr, b []byte, failed *bool) []byte {
	for len(b) > 0 {
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
		switch errno {
		case 0:
			b = b[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			return b
		default:
			*failed = true
			return b
		}
	}
	return b
}
