//go:build !linux

package wspipe

import "net"

// Off Linux, where dgrelay is developed but not deployed, every source is
// read, and every destination written, through net.Conn.

type socket struct{}

func newSocket(net.Conn) socket { return socket{} }

func (socket) attach(*hangupState) {}

// NewTLSSocket is conn itself: TLS sources are read through net.Conn.
func NewTLSSocket(conn net.Conn) net.Conn { return conn }

type sockIO struct{}

func (*sockIO) init(*Pipe) {}

func (p *Pipe) readSource() (bool, error) { return p.readStream() }

// hangupState is empty: a stream source is read as net.Conn reads it.
type hangupState struct{}

func (*Pipe) watchSource()   {}
func (*Pipe) unwatchSource() {}

func (*sockIO) write(p *Pipe, b []byte) error {
	_, err := p.dst.Conn.Write(b)
	return err
}

// Polled reports whether p is read when its socket is readable: never off
// Linux.
func (p *Peer) Polled() bool { return false }
