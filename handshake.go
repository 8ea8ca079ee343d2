package main

import (
	"net"
	"sync/atomic"

	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// The coder/websocket seam. The library does both handshakes, the client's
// (Accept) and Deepgram's (Dial, through upgradeTransport), and then hands
// over the bare connections: the session reads and writes frames on them
// itself (internal/wspipe), and the library's per-message reader and writer,
// with the buffers they keep, are never on the relay's path.

// handoffConn is a connection coder/websocket does a handshake on and then
// hands over: once released, the library's Close leaves it open for the
// session, which reads and writes its frames from then on.
type handoffConn struct {
	net.Conn
	// early is what was read past the handshake and not yet by anyone.
	early []byte
	// readEarly makes Read return early first. On the client side it is
	// false: net/http's reader, which the library reads through, has the
	// same bytes.
	readEarly bool
	released  atomic.Bool
}

func (h *handoffConn) Read(p []byte) (int, error) {
	if h.readEarly && len(h.early) > 0 {
		n := copy(p, h.early)
		h.early = h.early[n:]
		return n, nil
	}
	return h.Conn.Read(p)
}

func (h *handoffConn) Close() error {
	if h.released.Load() {
		return nil
	}
	return h.Conn.Close()
}

// release takes h from the library's Conn c: c's buffers go back to its pools
// and h stays open.
func (h *handoffConn) release(c *websocket.Conn) {
	h.released.Store(true)
	_ = c.CloseNow()
}

// takeOver releases h from c and makes it side's peer for the session's
// pipes, with what was read past the handshake.
func (h *handoffConn) takeOver(c *websocket.Conn, side wspipe.Side) *wspipe.Peer {
	h.release(c)
	return wspipe.NewPeer(h.Conn, h.early, side)
}
