package wspipe

import (
	"encoding/binary"
	"testing"
)

// TestParseHeaderLimits: lengths at each encoding's limits, and the one a
// peer may not send (a 64-bit length with its top bit set).
func TestParseHeaderLimits(t *testing.T) {
	for _, n := range []uint64{0, 125, 126, 0xffff, 0x10000, 1<<63 - 1} {
		var b []byte
		switch {
		case n <= 125:
			b = []byte{0x82, byte(n)}
		case n <= 0xffff:
			b = binary.BigEndian.AppendUint16([]byte{0x82, 126}, uint16(n))
		default:
			b = binary.BigEndian.AppendUint64([]byte{0x82, 127}, n)
		}
		var h Header
		got, err := ParseHeader(b, &h)
		if err != nil || got != len(b) || uint64(h.Length) != n || !h.Fin || h.Opcode != OpBinary {
			t.Errorf("length %d: %d %+v %v", n, got, h, err)
		}
		if got, err := ParseHeader(b[:len(b)-1], &h); got != 0 || err != nil {
			t.Errorf("length %d, one byte short: %d %v", n, got, err)
		}
	}
	var h Header
	if _, err := ParseHeader(binary.BigEndian.AppendUint64([]byte{0x82, 127}, 1<<63), &h); err != ErrBadHeader {
		t.Errorf("2^63: %v", err)
	}
}

// TestParseClose: the close payloads RFC 6455 allows and those it does not.
func TestParseClose(t *testing.T) {
	for _, tc := range []struct {
		payload []byte
		code    int
		ok      bool
	}{
		{nil, StatusNoStatus, true},
		{[]byte{3}, 0, false},
		{ClosePayload(1000, "bye"), 1000, true},
		{ClosePayload(4999, ""), 4999, true},
		{ClosePayload(1005, "x")[:0], StatusNoStatus, true},
		{binary.BigEndian.AppendUint16(nil, 1005), 1005, false},
		{binary.BigEndian.AppendUint16(nil, 1006), 1006, false},
		{binary.BigEndian.AppendUint16(nil, 2999), 2999, false},
		{append(binary.BigEndian.AppendUint16(nil, 1000), 0xff), 1000, false},
	} {
		code, _, ok := ParseClose(tc.payload)
		if ok != tc.ok || (ok && code != tc.code) {
			t.Errorf("%x: %d %v, want %d %v", tc.payload, code, ok, tc.code, tc.ok)
		}
	}
}

// FuzzParseHeader: any bytes either parse to a header that AppendFrame
// writes back the same (length and all), are too short, or are refused.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x05})
	f.Add([]byte{0x82, 0xfe, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		n, err := ParseHeader(b, &h)
		if err != nil || n == 0 {
			return
		}
		if n != HeaderLen(b[1]) || h.Length < 0 {
			t.Fatalf("%x: %d bytes, %+v", b, n, h)
		}
		if h.Length > 1<<16 || !h.Fin || h.Rsv != 0 {
			return
		}
		again := AppendFrame(nil, h.Opcode, make([]byte, h.Length), h.Masked)
		var h2 Header
		if m, _ := ParseHeader(again, &h2); h2.Length != h.Length || h2.Opcode != h.Opcode || h2.Masked != h.Masked || m == 0 {
			t.Fatalf("%x reads %+v; written again reads %+v", b, h, h2)
		}
	})
}
