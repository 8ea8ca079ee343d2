package wspipe

import (
	"net"
	"sync"
)

// Side names one end of a session.
type Side int

const (
	// Client is the browser: its frames are masked.
	Client Side = iota
	// Upstream is Deepgram: its frames are not, and the relay masks its own
	// frames to it, as a client.
	Upstream
)

func (s Side) String() string {
	if s == Client {
		return "client"
	}
	return "upstream"
}

// Peer is one side of a session after its handshake: the bare connection the
// pipes read and write frames on.
type Peer struct {
	Conn net.Conn
	Side Side
	// early is what arrived with the handshake, relayed before any read.
	early []byte
	sock  socket
	hang  hangupState
}

// NewPeer takes over conn for side; early is what was read past the
// handshake and not yet relayed.
func NewPeer(conn net.Conn, early []byte, side Side) *Peer {
	p := &Peer{Conn: conn, Side: side, early: early, sock: newSocket(conn)}
	p.sock.attach(&p.hang)
	return p
}

// bufferPool lends byte slices of one size (as pointers, so that Put does
// not allocate).
func bufferPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
}

// ReadBufferSize is the buffer one socket read borrows: a message longer
// than it arrives over several reads.
const ReadBufferSize = 32 << 10

// textBufferSize is the pooled buffer a text message read whole starts in; a
// longer one grows out of it, up to the message limit.
const textBufferSize = 32 << 10

// textBuffers lends a buffer per text message, so an idle session holds none.
var textBuffers = bufferPool(textBufferSize)
