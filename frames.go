package main

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// WebSocket frame opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxHeaderLen is the longest frame header: 2 bytes, an 8-byte length and a
// 4-byte mask key.
const maxHeaderLen = 14

// maxControlPayload is the most a control frame may carry (RFC 6455 §5.5).
const maxControlPayload = 125

// frameHeader is one decoded frame header.
type frameHeader struct {
	fin    bool
	rsv    byte
	opcode byte
	masked bool
	mask   [4]byte
	length int64
}

func (h *frameHeader) isControl() bool { return h.opcode&0x8 != 0 }

// errBadFrame is a header no WebSocket peer may send: a 64-bit length with
// its top bit set.
var errBadFrame = errors.New("malformed frame header")

// headerLen is the length of the header that starts with b0 b1.
func headerLen(b1 byte) int {
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

// parseHeader decodes the header at the start of b. It returns 0 when b holds
// only part of one.
func parseHeader(b []byte, h *frameHeader) (int, error) {
	if len(b) < 2 {
		return 0, nil
	}
	n := headerLen(b[1])
	if len(b) < n {
		return 0, nil
	}
	h.fin = b[0]&0x80 != 0
	h.rsv = b[0] & 0x70
	h.opcode = b[0] & 0x0f
	h.masked = b[1]&0x80 != 0
	p := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(b[2:]))
		p += 2
	case 127:
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return 0, errBadFrame
		}
		h.length = int64(u)
		p += 8
	default:
		h.length = int64(l)
	}
	if h.masked {
		copy(h.mask[:], b[p:p+4])
	}
	return n, nil
}

// appendFrame appends one whole frame carrying payload. A frame for Deepgram
// is masked, as a client's must be, with a fresh key from crypto/rand; only
// the relay's own frames (closes, filtered text) are built here, never audio.
func appendFrame(dst []byte, opcode byte, payload []byte, masked bool) []byte {
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
	applyMask(dst[start:], key, 0)
	return dst
}

// applyMask XORs b with key, b starting at offset pos of its frame's payload.
// Only close frames and text messages the relay reads go through it; audio
// passes masked as it came.
func applyMask(b []byte, key [4]byte, pos int) {
	for i := range b {
		b[i] ^= key[(pos+i)&3]
	}
}

// closePayload encodes a close frame's payload; code 1005 (no status) is an
// empty one, as the peer sent it.
func closePayload(code websocket.StatusCode, reason string) []byte {
	if code == websocket.StatusNoStatusRcvd {
		return nil
	}
	p := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
	return append(p, reason...)
}

// parseClose decodes a close frame's (unmasked) payload. ok is false for a
// payload RFC 6455 forbids: one byte, a code no peer may send, or a reason
// that is not UTF-8.
func parseClose(p []byte) (code websocket.StatusCode, reason string, ok bool) {
	switch {
	case len(p) == 0:
		return websocket.StatusNoStatusRcvd, "", true
	case len(p) == 1:
		return 0, "", false
	}
	code = websocket.StatusCode(binary.BigEndian.Uint16(p))
	reason = string(p[2:])
	return code, reason, validCloseCode(code) && utf8.ValidString(reason)
}

// validCloseCode reports whether code may appear in a close frame (RFC 6455
// §7.4, and the IANA registry for 1012-1014).
func validCloseCode(code websocket.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
