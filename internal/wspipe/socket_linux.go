package wspipe

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readBuffers lends a buffer per read, so a waiting direction holds none.
var readBuffers = bufferPool(ReadBufferSize)

// socket is what a Peer reads and writes without net.Conn's buffer-first
// Read: the TCP socket itself, or the one under a TLS connection.
type socket struct {
	// raw is conn's socket; nil when conn is not a plain TCP socket.
	raw syscall.RawConn
	// tls is the socket under conn when conn is TLS over a tlsSocket (the
	// upstream in production): conn is read when it is readable, as raw is.
	tls *tlsSocket
}

func newSocket(conn net.Conn) socket {
	if tc, ok := conn.(*tls.Conn); ok {
		ts, _ := tc.NetConn().(*tlsSocket)
		return socket{tls: ts}
	}
	return socket{raw: rawSocket(conn)}
}

// polled is the socket a source is waited on and read through: the TCP
// socket itself, or the one under TLS; nil when there is none.
func (s socket) polled() syscall.RawConn {
	if s.tls != nil {
		return s.tls.raw
	}
	return s.raw
}

// attach gives a TLS source's socket its peer's hangup state.
func (s socket) attach(h *hangupState) {
	if s.tls != nil {
		s.tls.hang = h
	}
}

// rawSocket is conn's socket; nil when conn is not a plain TCP socket.
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

// sockIO is a pipe's state for its socket calls. The callbacks are made once,
// and their results kept here, so that waiting on a socket allocates nothing.
type sockIO struct {
	readErr, writeErr      error
	stop                   bool
	pending                []byte
	onReadable, onWritable func(fd uintptr) bool
	onTLSReadable          func(fd uintptr) bool
	sendNow                func(fd uintptr)
}

func (sio *sockIO) init(p *Pipe) {
	sio.onReadable, sio.onWritable, sio.onTLSReadable = p.readSocket, p.writeSocket, p.readTLSSocket
	sio.sendNow = func(fd uintptr) { p.writeSocket(fd) }
}

// readSource waits for src to be readable and reads what it has. Like
// nginx, it waits on the socket holding no buffer; a source without one
// (not over TCP) is read through net.Conn.
func (p *Pipe) readSource() (bool, error) {
	switch {
	case p.src.sock.raw != nil:
		return p.readRaw(p.src.sock.raw, p.io.onReadable)
	case p.src.sock.tls != nil:
		return p.readRaw(p.src.sock.tls.raw, p.io.onTLSReadable)
	}
	return p.readStream()
}

// watchSource puts src's socket in the hangup watch, so that it may be read
// until a short read instead of until EAGAIN; unwatchSource takes it out.
func (p *Pipe) watchSource() {
	raw := p.src.sock.polled()
	if raw == nil {
		return
	}
	_ = raw.Control(func(fd uintptr) { hangupWatch.watch(p.src, int(fd)) })
}

func (p *Pipe) unwatchSource() { hangupWatch.unwatch(p.src) }

// readRaw waits for a socket to be readable and runs onReadable on it.
func (p *Pipe) readRaw(raw syscall.RawConn, onReadable func(fd uintptr) bool) (bool, error) {
	p.io.readErr, p.io.stop = nil, false
	if err := raw.Read(onReadable); err != nil && p.io.readErr == nil {
		p.io.readErr = err
	}
	return p.io.stop, p.io.readErr
}

// write sends b to dst's socket when it has one, waiting while it is full.
// What the socket takes at once is sent under Control, which only holds
// the descriptor open; the rest waits through Write, which also takes the
// write lock and readies the poll descriptor, as only a wait needs. The
// pipe is dst's one writer.
func (sio *sockIO) write(p *Pipe, b []byte) error {
	raw := p.dst.sock.raw
	if raw == nil {
		_, err := p.dst.Conn.Write(b)
		return err
	}
	sio.pending, sio.writeErr = b, nil
	err := raw.Control(sio.sendNow)
	if err == nil && sio.writeErr == nil && len(sio.pending) > 0 {
		err = raw.Write(sio.onWritable)
	}
	if err != nil && sio.writeErr == nil {
		sio.writeErr = err
	}
	sio.pending = nil
	return sio.writeErr
}

// readSocket is the callback a pipe waits on src's socket with; it reports
// true to stop waiting.
func (p *Pipe) readSocket(fd uintptr) bool {
	bp := readBuffers.Get().(*[]byte)
	buf := *bp
	for {
		n, errno := recv(fd, buf)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			readBuffers.Put(bp)
			return false
		case errno != 0:
			p.io.readErr = errno
		case n == 0:
			p.io.readErr = io.EOF
		default:
			if p.io.stop = p.consume(buf[:n]); p.io.stop {
				break
			}
			// Read again unless the socket is known empty: a short
			// read is not enough alone (hangup_linux.go says why).
			if p.src.hang.drained(n, len(buf)) {
				readBuffers.Put(bp)
				return false
			}
			continue
		}
		readBuffers.Put(bp)
		return true
	}
}

// writeSocket is the callback a pipe writes p.io.pending to dst's socket with;
// it reports false to wait until the socket takes more.
func (p *Pipe) writeSocket(fd uintptr) bool {
	var err error
	p.io.pending, err = sendAll(fd, p.io.pending)
	if err != nil {
		p.io.writeErr = err
		return true
	}
	return len(p.io.pending) == 0
}

// sendAll sends b until the socket takes no more, and returns what is left
// of it, with an error other than EAGAIN (which leaves a rest to wait with).
func sendAll(fd uintptr, b []byte) ([]byte, error) {
	for len(b) > 0 {
		n, errno := send(fd, b)
		switch errno {
		case 0:
			b = b[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			return b, nil
		default:
			return b, errno
		}
	}
	return b, nil
}

// recv and send are recvfrom(2) and sendto(2) without an address, as nginx
// calls them: socket calls go straight to the socket layer, where read(2) and
// write(2) pass through the VFS first (measured: 5% of the relay's CPU under
// voice load). x/sys's Recvfrom would allocate the address it returns.
//
// They are raw system calls: the scheduler is not told. Every socket they
// are called on is non-blocking (the net package makes it so, and the pipe
// waits for readiness on the runtime's poller instead), so they return at
// once, with EAGAIN when the socket has nothing or takes nothing: there is no
// blocked thread whose P the runtime would need to hand to another. (A long
// send, such as 64 KiB over loopback, which also runs the receiver's TCP
// input, holds its P for those microseconds as any Go code would: it is CPU
// work, not waiting.) Telling the scheduler is not free: entersyscall wakes
// the runtime's monitor thread (sysmon) from the deep sleep it enters
// whenever every P is idle (entersyscallWakeSysmon, runtime/proc.go), and
// sysmon then polls every 20 us for a millisecond and more before it backs
// off and sleeps again. At voice rates the relay goes idle and busy again
// thousands of times a second, so sysmon polled most of the time: a plain
// build took about half again the CPU per voice call of the image, which hid
// it with GODEBUG=schedtrace (BENCHMARKS.md).
//
// They return the errno itself, not an error, so that the checks made on
// every message compare integers rather than interfaces.
func recv(fd uintptr, b []byte) (int, syscall.Errno) { return recvFlags(fd, b, 0) }

func recvFlags(fd uintptr, b []byte, flags int) (int, syscall.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(flags), 0, 0)
	return int(n), errno
}

func send(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
	return int(n), errno
}

// Polled reports whether p is read when its socket is readable, holding no
// buffer while it waits (a TCP socket, or TLS over NewTLSSocket).
func (p *Peer) Polled() bool { return p.sock.polled() != nil }
