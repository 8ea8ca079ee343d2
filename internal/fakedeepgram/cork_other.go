//go:build !linux

package fakedeepgram

// cork does nothing off Linux: the bytes and the FIN may leave apart.
func cork(uintptr) error { return nil }
