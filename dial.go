package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"dgrelay/internal/wspipe"
)

// upgradeTransport is the http.RoundTripper coder/websocket dials Deepgram
// through. It does only what a WebSocket handshake needs: connect (through an
// HTTPS_PROXY from the environment if one is set, then TLS for wss), write the
// request, read the 101, and hand the bare connection to the session, which
// relays frames on it itself. net/http's Transport would keep its persistConn,
// with two 4 KiB buffers, alive under every upgraded connection.
type upgradeTransport struct {
	dialer net.Dialer
	// tlsConfig is cloned per dial with the server's name; nil is the
	// system roots, TLS 1.2 at least.
	tlsConfig *tls.Config
	// proxy picks the proxy for a request; http.ProxyFromEnvironment.
	proxy func(*http.Request) (*url.URL, error)
}

func newUpgradeTransport() *upgradeTransport {
	return &upgradeTransport{
		dialer: net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 15 * time.Second},
		tlsConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"http/1.1"},
			// Every session dials Deepgram anew; resuming a TLS session
			// skips the certificate chain's verification and signature,
			// the bulk of a connect's CPU (nginx resumes by default). The
			// cache holds a ticket per server name.
			ClientSessionCache: tls.NewLRUClientSessionCache(upstreamTLSSessions),
		},
		proxy: http.ProxyFromEnvironment,
	}
}

// upstreamTLSSessions bounds the TLS session cache: Deepgram is two or three
// host names.
const upstreamTLSSessions = 16

// handoffSlotKey is the context key under which dial leaves a handoffSlot for
// the transport to put the upgraded connection in: coder/websocket's Dial
// returns a Conn, not the connection under it.
type handoffSlotKey struct{}

type handoffSlot struct{ conn *handoffConn }

// withHandoffSlot is ctx carrying slot, for a dial through upgradeTransport.
func withHandoffSlot(ctx context.Context, slot *handoffSlot) context.Context {
	return context.WithValue(ctx, handoffSlotKey{}, slot)
}

// handshakeReadBuffer holds Deepgram's 101 response (about 400 bytes); a
// longer one still parses, in more reads.
const handshakeReadBuffer = 1024

func (t *upgradeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	proxy, err := t.proxy(req)
	if err != nil {
		// The error quotes the variable's value, password and all.
		return nil, errors.New("HTTPS_PROXY is not a valid URL")
	}
	if proxy != nil && proxy.Scheme != "http" {
		return nil, fmt.Errorf("HTTPS_PROXY: a %s:// proxy is not supported, only http://", proxy.Scheme)
	}
	ctx := req.Context()
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = "80"
		if req.URL.Scheme == "https" {
			port = "443"
		}
	}
	addr := net.JoinHostPort(host, port)
	dialAddr := addr
	if proxy != nil {
		dialAddr = proxy.Host
		if proxy.Port() == "" {
			dialAddr = net.JoinHostPort(proxy.Hostname(), "80")
		}
	}
	conn, err := t.dialer.DialContext(ctx, "tcp", dialAddr)
	if err != nil {
		return nil, err
	}
	// The context bounds the whole exchange: cancelling it unblocks any
	// read or write below by expiring the connection's deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	var resp *http.Response
	if proxy != nil {
		err = connectThrough(conn, proxy, addr)
	}
	if err == nil {
		resp, err = t.handshake(ctx, conn, req, host)
	}
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

// connectThrough asks an HTTP proxy for a tunnel to addr (RFC 9110 §9.3.6).
func connectThrough(conn net.Conn, proxy *url.URL, addr string) error {
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if u := proxy.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("write CONNECT to proxy %s: %w", proxy.Host, err)
	}
	br := bufio.NewReaderSize(conn, handshakeReadBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fmt.Errorf("read CONNECT answer from proxy %s: %w", proxy.Host, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy %s refused CONNECT: %s", proxy.Host, resp.Status)
	}
	if br.Buffered() > 0 {
		// The server speaks only after the relay's first bytes.
		return fmt.Errorf("proxy %s sent bytes after its CONNECT answer", proxy.Host)
	}
	return nil
}

func (t *upgradeTransport) handshake(ctx context.Context, conn net.Conn, req *http.Request, host string) (*http.Response, error) {
	if req.URL.Scheme == "https" {
		cfg := t.tlsConfig.Clone()
		cfg.ServerName = host
		tc := tls.Client(wspipe.NewTLSSocket(conn), cfg)
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
	// The upgraded connection is the body, and goes to the session through
	// the slot. Bytes Deepgram sent right after its 101 (Welcome may come
	// in the same packet) are relayed first.
	hc := &handoffConn{Conn: conn, readEarly: true}
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		hc.early = bytes.Clone(early)
	}
	if slot, ok := ctx.Value(handoffSlotKey{}).(*handoffSlot); ok {
		slot.conn = hc
	}
	resp.Body = hc
	return resp, nil
}

// closingBody closes the connection with a refused handshake's body.
type closingBody struct {
	io.ReadCloser
	conn net.Conn
}

func (b *closingBody) Close() error {
	return errors.Join(b.ReadCloser.Close(), b.conn.Close())
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
