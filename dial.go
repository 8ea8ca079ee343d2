package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// upgradeTransport is the http.RoundTripper coder/websocket dials Deepgram
// through. It does only what a WebSocket handshake needs: connect (TLS for
// wss), write the request, read the 101, and hand over the bare connection.
// net/http's Transport would keep its persistConn, with two 4 KiB buffers,
// alive under every upgraded connection for the session's whole life; at
// thousands of sessions a instance, that is most of a session's memory.
type upgradeTransport struct {
	dialer net.Dialer
	// tlsConfig is cloned per dial with the server's name; nil is the
	// system roots, TLS 1.2 at least.
	tlsConfig *tls.Config
	// fallback carries requests that go through an HTTP proxy from the
	// environment (HTTPS_PROXY), which this transport does not speak.
	fallback http.RoundTripper
}

func newUpgradeTransport() *upgradeTransport {
	fallback := http.DefaultTransport.(*http.Transport).Clone()
	fallback.ForceAttemptHTTP2 = false
	return &upgradeTransport{
		dialer:    net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 15 * time.Second},
		tlsConfig: &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
		fallback:  fallback,
	}
}

// handshakeReadBuffer holds Deepgram's 101 response (about 400 bytes); a
// longer one still parses, in more reads.
const handshakeReadBuffer = 1024

func (t *upgradeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if proxy, err := http.ProxyFromEnvironment(req); err != nil || proxy != nil {
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = "80"
		if req.URL.Scheme == "https" {
			port = "443"
		}
	}
	conn, err := t.dialer.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, err
	}
	// The context bounds the whole exchange: cancelling it unblocks any
	// read or write below by expiring the connection's deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	resp, err := t.handshake(ctx, conn, req, host)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("upstream handshake: %w", ctx.Err())
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return resp, nil
}

func (t *upgradeTransport) handshake(ctx context.Context, conn net.Conn, req *http.Request, host string) (*http.Response, error) {
	if req.URL.Scheme == "https" {
		cfg := t.tlsConfig.Clone()
		cfg.ServerName = host
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("tls handshake with %s: %w", host, err)
		}
		conn = tc
	}
	if err := req.Write(conn); err != nil {
		return nil, fmt.Errorf("write handshake: %w", err)
	}
	br := bufio.NewReaderSize(conn, handshakeReadBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("read handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// An error answer: its body is read (bounded by the caller) and
		// the connection closed with it.
		resp.Body = &closingBody{ReadCloser: resp.Body, conn: conn}
		return resp, nil
	}
	// The upgraded connection is the body. Bytes Deepgram sent right after
	// its 101 (Welcome may come in the same packet) are read first.
	resp.Body = conn.(io.ReadWriteCloser)
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		// early belongs to br, which is dropped: copy it.
		resp.Body = &upgradedConn{Reader: io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn), conn: conn}
	}
	return resp, nil
}

// upgradedConn is an upgraded connection whose first bytes were read with
// the response headers.
type upgradedConn struct {
	io.Reader
	conn net.Conn
}

func (u *upgradedConn) Write(p []byte) (int, error) { return u.conn.Write(p) }
func (u *upgradedConn) Close() error                { return u.conn.Close() }

// closingBody closes the connection with a refused handshake's body.
type closingBody struct {
	io.ReadCloser
	conn net.Conn
}

func (b *closingBody) Close() error {
	return errors.Join(b.ReadCloser.Close(), b.conn.Close())
}
