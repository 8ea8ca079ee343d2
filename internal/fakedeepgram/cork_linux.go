package fakedeepgram

import "golang.org/x/sys/unix"

// cork holds what is written to fd until the socket is uncorked or closed.
func cork(fd uintptr) error {
	return unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1)
}
