//go:build !linux

package main

import (
	"net"
	"syscall"
)

// rawSocket is nil off Linux, where dgrelay is developed but not deployed:
// every source is read, and every destination written, through net.Conn.
func rawSocket(net.Conn) syscall.RawConn { return nil }

// newTLSSocket is conn itself: TLS sources are read through net.Conn.
func newTLSSocket(conn net.Conn) net.Conn { return conn }

// tlsSocket is never made off Linux.
type tlsSocket struct {
	net.Conn
	raw syscall.RawConn
}

func (p *pipe) readSocket(uintptr) bool    { panic("no raw sockets on this platform") }
func (p *pipe) writeSocket(uintptr) bool   { panic("no raw sockets on this platform") }
func (p *pipe) readTLSSocket(uintptr) bool { panic("no raw sockets on this platform") }
