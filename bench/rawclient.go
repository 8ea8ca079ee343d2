package main

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// rawClient is a minimal WebSocket client for the voice load: it writes
// prebuilt frames and skims the ones it reads, so that hundreds of sessions
// cost the load core little and the proxy's figures are the proxy's. The
// latency and correctness rows use coder/websocket instead.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRaw performs the opening handshake by hand.
func dialRaw(rawURL string, timeout time.Duration) (*rawClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", u.Host, timeout)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if u.Scheme == "wss" {
		cfg := upstreamTLS.Clone()
		cfg.ServerName = u.Hostname()
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(nonce[:]))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("handshake: HTTP %d", resp.StatusCode)
	}
	_ = conn.SetDeadline(time.Time{})
	return &rawClient{conn: conn, br: br}, nil
}

// clientFrame builds one masked client frame. The mask key is zero, which
// leaves the payload as it is: valid on the wire and free to produce.
func clientFrame(opcode byte, payload []byte) []byte {
	var hdr []byte
	switch n := len(payload); {
	case n < 126:
		hdr = []byte{0x80 | opcode, 0x80 | byte(n)}
	case n < 1<<16:
		hdr = []byte{0x80 | opcode, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		hdr = make([]byte, 10)
		hdr[0], hdr[1] = 0x80|opcode, 0x80|127
		binary.BigEndian.PutUint64(hdr[2:], uint64(n))
	}
	hdr = append(hdr, 0, 0, 0, 0) // the mask key
	return append(hdr, payload...)
}

// skim reads one frame and discards its payload; it reports whether the
// frame ended a message and whether it was a close frame.
func (c *rawClient) skim(scratch []byte) (fin, closed bool, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return false, false, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return false, false, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return false, false, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if h[1]&0x80 != 0 {
		return false, false, errors.New("a server frame is masked")
	}
	for n > 0 {
		k := min(n, uint64(len(scratch)))
		if _, err := io.ReadFull(c.br, scratch[:k]); err != nil {
			return false, false, err
		}
		n -= k
	}
	return h[0]&0x80 != 0, h[0]&0x0f == 0x8, nil
}
