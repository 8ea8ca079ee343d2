package main

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawSocket is conn's socket, for a pipe to read and write without net.Conn's
// buffer-first Read; nil when conn is not a plain TCP socket.
func rawSocket(conn net.Conn) syscall.RawConn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// readSocket is the callback a pipe waits on src's socket with; it reports
// true to stop waiting.
func (p *pipe) readSocket(fd uintptr) bool {
	bp := readBuffers.Get().(*[]byte)
	buf := *bp
	for {
		n, err := recv(fd, buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			readBuffers.Put(bp)
			return false
		case err != nil:
			p.readErr = err
		case n == 0:
			p.readErr = io.EOF
		default:
			if p.stop = p.consume(buf[:n]); p.stop {
				break
			}
			if n == len(buf) {
				continue // more may be waiting
			}
			// Drained: the poller says when more comes.
			readBuffers.Put(bp)
			return false
		}
		readBuffers.Put(bp)
		return true
	}
}

// writeSocket is the callback a pipe writes p.pending to dst's socket with;
// it reports false to wait until the socket takes more.
func (p *pipe) writeSocket(fd uintptr) bool {
	for len(p.pending) > 0 {
		n, err := send(fd, p.pending)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			p.writeErr = err
			return true
		}
		p.pending = p.pending[n:]
	}
	return true
}

// recv and send are recvfrom(2) and sendto(2) without an address, as nginx
// calls them: socket calls go straight to the socket layer, where read(2) and
// write(2) pass through the VFS first (measured: 5% of the relay's CPU under
// voice load). x/sys's Recvfrom would allocate the address it returns.
func recv(fd uintptr, b []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func send(fd uintptr, b []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
