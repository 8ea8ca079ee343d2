package main

import (
	"bufio"
	"bytes"
	"net"
	"net/http"

	"github.com/coder/websocket"
)

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
