package wspipe

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// tlsSocket is the TCP connection under a TLS upstream (Deepgram's). Outside
// a pipe's read callback it is the connection itself (the handshakes go
// through it); inside, its Read takes what the socket has without blocking,
// so that the pipe reading the TLS connection waits on the poller holding no
// buffer and reads each message with one recvfrom, as on a plain socket.
type tlsSocket struct {
	net.Conn
	raw syscall.RawConn
	// polled: Read is inside readTLSSocket, on fd. drained: a read there
	// met EAGAIN, so the socket is empty until the poller says more.
	polled, drained bool
	fd              uintptr
	peekBuf         [1]byte
	// hang is the peer's hangup state, for what a short read means.
	hang *hangupState

	// The TLS records in what Read has returned inside the callback: how
	// many were completed in this callback, and the one being completed
	// (its header so far, then the bytes of its body still to come).
	// exact: crypto/tls held no whole record when this callback began.
	records, hdrN, bodyLeft int
	hdr                     [5]byte
	exact                   bool

	// The write in progress: what is left of it and how it ended, for
	// onWritable, which is made once so that a write allocates nothing.
	// crypto/tls writes from more than one goroutine (the pipe toward
	// Deepgram; a close from the other); writeMu keeps them apart.
	writeMu    sync.Mutex
	pending    []byte
	writeErr   error
	onWritable func(fd uintptr) bool
}

// NewTLSSocket is what crypto/tls is to be given to run over conn, for a
// Peer to read the TLS connection when its socket is readable: a tlsSocket
// when conn is a plain TCP socket, conn itself otherwise.
func NewTLSSocket(conn net.Conn) net.Conn {
	raw := rawSocket(conn)
	if raw == nil {
		return conn
	}
	s := &tlsSocket{Conn: conn, raw: raw}
	s.onWritable = s.writable
	return s
}

// Write sends what crypto/tls has sealed with sendto(2), raw as the pipe's
// own sends are (see send), waiting on the poller while the socket is full.
// net.Conn's Write would make a write(2) through the scheduler: a TLS
// upstream is written once per message toward Deepgram, and each would wake
// the runtime's monitor thread.
func (s *tlsSocket) Write(b []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.pending, s.writeErr = b, nil
	err := s.raw.Write(s.onWritable)
	n := len(b) - len(s.pending)
	s.pending = nil
	if s.writeErr != nil {
		err = s.writeErr
	}
	return n, err
}

// writable is the callback Write sends s.pending with; it reports false to
// wait until the socket takes more.
func (s *tlsSocket) writable(fd uintptr) bool {
	var err error
	s.pending, err = sendAll(fd, s.pending)
	if err != nil {
		s.writeErr = os.NewSyscallError("sendto", err)
		return true
	}
	return len(s.pending) == 0
}

// Read counts the records in every byte crypto/tls reads, from the first
// byte of its handshake, so that the count stays in step with the framing.
func (s *tlsSocket) Read(b []byte) (int, error) {
	n, err := s.read(b)
	s.countRecords(b[:n])
	return n, err
}

func (s *tlsSocket) read(b []byte) (int, error) {
	if !s.polled {
		return s.Conn.Read(b)
	}
	if s.drained {
		return 0, errWouldBlock
	}
	for {
		n, errno := recv(s.fd, b)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			s.drained = true
			return 0, errWouldBlock
		case errno != 0:
			return 0, os.NewSyscallError("recvfrom", errno)
		case n == 0:
			return 0, io.EOF
		}
		// A short read on a watched socket empties it, as far as the
		// pipe need know: the next Read waits on the poller without a
		// recvfrom to meet EAGAIN, and so does empty.
		s.drained = s.hang.drained(n, len(b))
		return n, nil
	}
}

// empty reports whether the socket has nothing more to read, its end
// included. Where no short read of a watched socket has said so (see
// hangupState.drained), it is looked for with a peek that leaves any byte for
// crypto/tls (whose own Read would allocate on the way to EAGAIN).
func (s *tlsSocket) empty() bool {
	if s.drained {
		return true
	}
	for {
		_, errno := recvFlags(s.fd, s.peekBuf[:], unix.MSG_PEEK)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			s.drained = true
			return true
		}
		return false // bytes, the end or an error: Read will say which
	}
}

// countRecords follows the TLS record framing (a 5-byte header ending in the
// body's length) through b, counting the records it completes.
func (s *tlsSocket) countRecords(b []byte) {
	for len(b) > 0 {
		if s.bodyLeft == 0 {
			k := copy(s.hdr[s.hdrN:], b)
			s.hdrN += k
			b = b[k:]
			if s.hdrN < len(s.hdr) {
				return
			}
			s.hdrN = 0
			s.bodyLeft = int(s.hdr[3])<<8 | int(s.hdr[4])
			if s.bodyLeft == 0 {
				s.records++
			}
			continue
		}
		k := min(s.bodyLeft, len(b))
		s.bodyLeft -= k
		b = b[k:]
		if s.bodyLeft == 0 {
			s.records++
		}
	}
}

// wouldBlockError is what a tlsSocket's Read inside the callback returns when
// the socket has nothing more. crypto/tls keeps a connection usable after a
// net.Error that is Temporary, with the part of a record it has read, and
// the pipe then waits on the poller.
type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "socket would block" }
func (wouldBlockError) Timeout() bool   { return false }
func (wouldBlockError) Temporary() bool { return true }

var errWouldBlock net.Error = wouldBlockError{}

// readTLSSocket is the callback a pipe waits on a TLS source's socket with:
// it reads the TLS connection into a borrowed buffer until crypto/tls needs
// bytes the socket does not have yet. It reports true to stop waiting.
func (p *Pipe) readTLSSocket(fd uintptr) bool {
	s := p.src.sock.tls
	s.polled, s.drained, s.fd, s.records = true, false, fd, 0
	bp := readBuffers.Get().(*[]byte)
	stop := p.readTLS(s, *bp)
	readBuffers.Put(bp)
	s.polled = false
	return stop
}

func (p *Pipe) readTLS(s *tlsSocket, buf []byte) bool {
	for returned := 0; ; {
		// A Read returns one record's plaintext at most, and the next
		// record may be whole in crypto/tls already: read again until
		// it needs bytes the socket does not have, or until the records
		// counted are all read and the socket is empty. The count saves
		// a Read per message, and crypto/tls's allocation in it.
		n, err := p.src.Conn.Read(buf)
		if n > 0 {
			if p.io.stop = p.consume(buf[:n]); p.io.stop {
				return true
			}
		}
		switch {
		case err == errWouldBlock:
			s.exact = true
			return false
		case err != nil:
			p.io.readErr = err
			return true
		}
		// Each Read that returns data has taken at least one of the
		// records completed in this callback (one with data, and any
		// before it without), so none is left when returned reaches
		// their count.
		if returned++; s.exact && n < len(buf) && returned >= s.records && s.empty() {
			return false
		}
	}
}
