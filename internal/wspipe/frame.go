package wspipe

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"unicode/utf8"
)

// Frame opcodes (RFC 6455 §5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// MaxHeaderLen is the longest frame header: 2 bytes, an 8-byte length and a
// 4-byte mask key.
const MaxHeaderLen = 14

// MaxControlPayload is the most a control frame may carry (RFC 6455 §5.5).
const MaxControlPayload = 125

// MaxCloseReason is the most a close frame's reason may hold: its payload
// less the 2-byte code.
const MaxCloseReason = MaxControlPayload - 2

// StatusNoStatus is the code that stands for a close frame without one
// (1005); it is never sent as a code.
const StatusNoStatus = 1005

// Header is one decoded frame header.
type Header struct {
	Fin    bool
	Rsv    byte // the three reserved bits, in place
	Opcode byte
	Masked bool
	Mask   [4]byte
	Length int64 // at most 2^63-1: a length with its top bit set is refused
}

// IsControl reports whether the frame is a close, ping or pong.
func (h *Header) IsControl() bool { return h.Opcode&0x8 != 0 }

// ErrBadHeader is a header no WebSocket peer may send: a 64-bit length with
// its top bit set.
var ErrBadHeader = errors.New("malformed frame header")

// HeaderLen is the length of a header whose second byte is b1.
func HeaderLen(b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// ParseHeader decodes the header at the start of b into h and returns its
// length, or 0 when b holds only part of one.
func ParseHeader(b []byte, h *Header) (int, error) {
	if len(b) < 2 {
		return 0, nil
	}
	n := HeaderLen(b[1])
	if len(b) < n {
		return 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = b[0] & 0x70
	h.Opcode = b[0] & 0x0f
	h.Masked = b[1]&0x80 != 0
	p := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(b[2:]))
		p += 2
	case 127:
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return 0, ErrBadHeader
		}
		h.Length = int64(u)
		p += 8
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], b[p:p+4])
	}
	return n, nil
}

// AppendFrame appends one whole frame carrying payload. A masked frame (a
// client's, which is what the relay is to Deepgram) gets a fresh key from
// crypto/rand. Only the relay's own frames are built here, never audio. It
// is not inlined: its locals would otherwise stay on the stack of the write
// that follows, which an idle session's goroutine keeps.
//
//go:noinline
func AppendFrame(dst []byte, opcode byte, payload []byte, masked bool) []byte {
	b1 := byte(0)
	if masked {
		b1 = 0x80
	}
	n := len(payload)
	switch {
	case n <= 125:
		dst = append(dst, 0x80|opcode, b1|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|opcode, b1|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|opcode, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if !masked {
		return append(dst, payload...)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	Mask(dst[start:], key, 0)
	return dst
}

// Mask XORs b with key, b starting at offset pos of its frame's payload.
// Masking and unmasking are the same.
func Mask(b []byte, key [4]byte, pos int) {
	for i := range b {
		b[i] ^= key[(pos+i)&3]
	}
}

// ClosePayload encodes a close frame's payload; StatusNoStatus is an empty
// one, as the peer sent it.
func ClosePayload(code int, reason string) []byte {
	if code == StatusNoStatus {
		return nil
	}
	p := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
	return append(p, reason...)
}

// ParseClose decodes a close frame's (unmasked) payload. ok is false for a
// payload RFC 6455 forbids: one byte, a code no peer may send, or a reason
// that is not UTF-8.
func ParseClose(p []byte) (code int, reason string, ok bool) {
	switch {
	case len(p) == 0:
		return StatusNoStatus, "", true
	case len(p) == 1:
		return 0, "", false
	}
	code = int(binary.BigEndian.Uint16(p))
	reason = string(p[2:])
	return code, reason, ValidCloseCode(code) && utf8.ValidString(reason)
}

// ValidCloseCode reports whether code may appear in a close frame (RFC 6455
// §7.4, and the IANA registry for 1012-1014).
func ValidCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
