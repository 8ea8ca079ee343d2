package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"

	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// The coder/websocket seam. The library does both handshakes, the client's
// (Accept) and Deepgram's (Dial, through upgradeTransport), and then hands
// over the bare connections: the session reads and writes frames on them
// itself (internal/wspipe), and the library's per-message reader and writer,
// with the buffers they keep, are never on the relay's path.

// accept upgrades the client's connection. A client that offered "bearer"
// gets it selected, or its browser would fail the handshake. The origin is
// not checked again: checkRequest did, by the same rules the library's own
// check follows, and one check is one set of rules to keep. The connection
// under the returned Conn is also returned, for the session to take over.
func (rl *relay) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, *handoffConn, error) {
	hw := &handoffWriter{ResponseWriter: w}
	c, err := websocket.Accept(hw, r, &websocket.AcceptOptions{
		Subprotocols:       []string{"bearer"},
		InsecureSkipVerify: true, // the origin was checked: see above
		CompressionMode:    websocket.CompressionDisabled,
	})
	return c, hw.conn, err
}

// handoffWriter is the ResponseWriter Accept hijacks through: it keeps the
// connection, and the bytes a client sent right after its upgrade request,
// which net/http had read ahead.
type handoffWriter struct {
	http.ResponseWriter
	conn *handoffConn
}

func (hw *handoffWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(hw.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	hw.conn = &handoffConn{Conn: conn}
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		hw.conn.early = bytes.Clone(early)
	}
	return hw.conn, brw, nil
}

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

// handoffSlotKey is the context key under which dial leaves a handoffSlot for
// the transport to put the upgraded connection in: coder/websocket's Dial
// returns a Conn, not the connection under it.
type handoffSlotKey struct{}

type handoffSlot struct{ conn *handoffConn }

// withHandoffSlot is ctx carrying slot, for a dial through upgradeTransport.
func withHandoffSlot(ctx context.Context, slot *handoffSlot) context.Context {
	return context.WithValue(ctx, handoffSlotKey{}, slot)
}

// dialOnce is one try at Deepgram's WebSocket.
func (rl *relay) dialOnce(ctx context.Context, up upstream, forwarded string) (*websocket.Conn, *handoffConn, *http.Response, error) {
	slot := new(handoffSlot)
	opts := rl.dialOpts
	opts.Host = up.host
	conn, resp, err := websocket.Dial(withHandoffSlot(ctx, slot), up.target(forwarded), &opts)
	if err == nil && slot.conn == nil {
		// Only upgradeTransport dials; anything else is a bug here.
		conn.CloseNow()
		conn, err = nil, errors.New("upgraded connection not handed over")
	}
	return conn, slot.conn, resp, err
}

// newDialOptions is how every dial to Deepgram goes: through
// upgradeTransport, with the key, without compression.
func newDialOptions(apiKey string) websocket.DialOptions {
	return websocket.DialOptions{
		HTTPClient: &http.Client{
			Transport: newUpgradeTransport(),
			// A 3xx is Deepgram's answer, never a place to go: following
			// it would send the key (and the forwarded query, in a
			// Referer) to whatever Location names. The 3xx itself reaches
			// dial, which answers UPSTREAM_REJECTED.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		HTTPHeader:      http.Header{"Authorization": {"Token " + apiKey}},
		CompressionMode: websocket.CompressionDisabled,
	}
}
