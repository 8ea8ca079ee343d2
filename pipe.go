package main

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// Once both handshakes are done, the relay forwards frames as they came, the
// way nginx does: a browser's frames are masked client frames, which is what
// Deepgram expects from the relay, and Deepgram's are unmasked server frames,
// which is what the browser expects. Each direction reads only frame headers,
// for the message size limit, the counters and the close handshake; payload
// bytes go from one socket to the other in the read that brought them, one
// read and one write for a frame that arrives whole. Text is read in full
// only when the Settings policy (up) or its secret scrub (down) must see it.
//
// coder/websocket does both handshakes; its per-message reader and writer are
// not on this path, because their buffers stayed with every idle session and
// their per-message work cost more CPU than the rest of the relay together
// (BENCHMARKS.md has the before and after).

// readBufferSize is the buffer one socket read borrows. A read that fills it
// is followed by another at once; one that does not means the socket is
// drained, and the next read waits for the poller.
const readBufferSize = 32 << 10

// streamBufferSize is the buffer held by a direction whose source can only
// be read through net.Conn (off Linux, or over a connection that is not a
// TCP socket): it is held while waiting. 4 KiB is what coder/websocket held.
const streamBufferSize = 4 << 10

var streamBuffers = bufferPool(streamBufferSize)

// bufferPool lends byte slices of one size (as pointers, so that Put does
// not allocate).
func bufferPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
}

// closeTimeout bounds the close handshake once a session ends: the close
// frames are written and each side's answer awaited for at most this long.
// It is coder/websocket's Close bound (5 s to write, 5 s for the answer): a
// client that stopped reading and comes back within it still reads why its
// session ended.
const closeTimeout = 10 * time.Second

// peer is one side of a session after its handshake: the bare connection the
// relay reads and writes frames on.
type peer struct {
	conn net.Conn
	// raw reads the socket without a buffer held while waiting; nil when
	// conn is not a plain TCP socket.
	raw syscall.RawConn
	// tls is the socket under conn when conn is TLS over plain TCP (the
	// upstream in production): conn is read when it is readable, as raw is.
	tls *tlsSocket
	// early is what arrived with the handshake, relayed before any read.
	early []byte
	side  side
}

func newPeer(h *handoffConn, sd side) *peer {
	p := &peer{conn: h.Conn, raw: rawSocket(h.Conn), early: h.early, side: sd}
	if tc, ok := h.Conn.(*tls.Conn); ok {
		p.tls, _ = tc.NetConn().(*tlsSocket)
	}
	return p
}

// pipe is one direction of a session. It reads frames from src and is the
// only writer to dst, which is why the two directions need no lock between
// them: the close frames and Error frames for dst are written here too.
type pipe struct {
	s        *session
	src, dst *peer
	flow     *flow
	text     textFilter // nil: text is forwarded as it came
	// scrub cleans a control frame's payload or a close reason from src,
	// within a byte limit; nil: they are forwarded as they came.
	scrub  func(b []byte, limit int) []byte
	maxMsg int64

	// The frame being read: its header, split across reads when hdrN > 0,
	// and how much of its payload is still to come.
	hdr      [maxHeaderLen]byte
	hdrN     int
	cur      frameHeader
	inFrame  bool
	left     int64
	pos      int  // payload bytes of cur already seen, for unmasking
	verbatim bool // cur goes to dst as it came

	// The message being read.
	inMessage bool
	msgLen    int64
	gather    bool    // a text message for the filter, gathered unmasked
	msgBuf    *[]byte // the pooled buffer msg started in
	msg       []byte
	held      int64                   // msg's bytes counted in the relay's text budget
	ctl       [maxControlPayload]byte // a control frame's payload
	ctlN      int

	// closeSent: the close for dst has been written or given up. dropping:
	// src is read only for its close frame. dstBroken: a write to dst
	// failed, so nothing more goes there.
	closeSent, dropping, dstBroken bool

	// readErr and stop are the results of onReadable, pending and writeErr
	// the state of onWritable; they are made once so that waiting on a
	// socket allocates nothing.
	readErr, writeErr      error
	stop                   bool
	pending                []byte
	onReadable, onWritable func(fd uintptr) bool
	onTLSReadable          func(fd uintptr) bool
}

// run relays src to dst until src has closed or failed and, once the session
// ends, until dst has been sent its close.
func (p *pipe) run() {
	// Whichever way the pipe ends, a message it was gathering goes back to
	// the text budget.
	defer p.dropGathered()
	p.onReadable, p.onWritable, p.onTLSReadable = p.readSocket, p.writeSocket, p.readTLSSocket
	if len(p.src.early) > 0 {
		early := p.src.early
		p.src.early = nil
		if p.consume(early) {
			return
		}
	}
	for {
		var stop bool
		var err error
		switch {
		case p.src.raw != nil:
			stop, err = p.readRaw(p.src.raw, p.onReadable)
		case p.src.tls != nil:
			stop, err = p.readRaw(p.src.tls.raw, p.onTLSReadable)
		default:
			stop, err = p.readStream()
		}
		if stop {
			return
		}
		if isTimeout(err) && p.s.closing.Load() {
			// end woke this read: the close for dst goes now unless a
			// frame to it is half written, and src is given until the
			// deadline to answer.
			if !p.midFrame() {
				p.closeDst()
			}
			if deadline := p.s.closeDeadline(); time.Now().Before(deadline) {
				_ = p.src.conn.SetReadDeadline(deadline)
				continue
			}
			return
		}
		// src is gone without a close frame.
		if !p.dropping {
			p.s.end(vanishedOutcome(p.src.side))
			if !p.midFrame() {
				p.closeDst()
			}
		}
		return
	}
}

// readRaw waits for src's socket to be readable, then reads it into a
// borrowed buffer. Like nginx, it reads again only when a read filled the
// buffer; otherwise the socket is drained and the poller will say when more
// comes. A net.Conn Read would instead read until EAGAIN, a wasted system
// call per message at voice rates.
func (p *pipe) readRaw(raw syscall.RawConn, onReadable func(fd uintptr) bool) (bool, error) {
	p.readErr, p.stop = nil, false
	if err := raw.Read(onReadable); err != nil && p.readErr == nil {
		p.readErr = err
	}
	return p.stop, p.readErr
}

// readStream reads a source that has no socket of its own to wait on (off
// Linux, or not over TCP) through a held buffer.
func (p *pipe) readStream() (bool, error) {
	bp := streamBuffers.Get().(*[]byte)
	defer streamBuffers.Put(bp)
	for {
		n, err := p.src.conn.Read(*bp)
		if n > 0 && p.consume((*bp)[:n]) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// midFrame reports whether part of a frame has gone to dst and the rest not:
// nothing else may be written to dst until it has.
func (p *pipe) midFrame() bool { return p.inFrame && p.verbatim }

// errProtocol is a frame that breaks RFC 6455: the connection is failed with
// 1002 (§7.1.7).
var errProtocol = errors.New("protocol error")

// errTextBudget is a text frame the relay would have to hold past its text
// budget: the session ends with 1013 (try again).
var errTextBudget = errors.New("text budget spent")

// consume handles bytes read from src: whole runs of forwarded frames are
// written to dst as they came, in one write per run. It reports true when src
// is to be read no more.
func (p *pipe) consume(b []byte) bool {
	run := 0 // b[run:i] is yet to be written to dst as it came
	i := 0
	flush := func(end int) {
		if run < end {
			p.write(b[run:end])
		}
		run = end
	}
	for i < len(b) {
		if !p.inFrame {
			if p.s.closing.Load() && !p.dropping {
				flush(i)
				p.closeDst()
			}
			// A header, whole in b or completed from one split across
			// reads.
			var n, used int
			var err error
			carried := p.hdrN > 0
			if !carried {
				n, err = parseHeader(b[i:], &p.cur)
				if n == 0 && err == nil {
					flush(i)
					p.hdrN = copy(p.hdr[:], b[i:])
					return false
				}
				used = n
			} else {
				k := copy(p.hdr[p.hdrN:], b[i:])
				n, err = parseHeader(p.hdr[:p.hdrN+k], &p.cur)
				if n == 0 && err == nil {
					p.hdrN += k
					return false
				}
				used = n - p.hdrN
			}
			if err == nil {
				err = p.startFrame()
			}
			if err != nil {
				flush(i)
				p.fail(err)
				if !errors.Is(err, websocket.ErrMessageTooBig) && err != errTextBudget {
					return true
				}
				// Too big or over the budget: the frame is skipped and
				// src read on for its answer to the close.
			}
			if carried {
				flush(i)
				if p.verbatim {
					p.write(p.hdr[:n])
				}
				p.hdrN = 0
				i += used
				run = i
			} else {
				if !p.verbatim {
					flush(i)
					run = i + used
				}
				i += used
			}
			if p.left == 0 && p.endFrame() {
				flush(i)
				return true
			}
			continue
		}
		k := len(b) - i
		if int64(k) > p.left {
			k = int(p.left)
		}
		if !p.verbatim {
			flush(i)
			p.payload(b[i : i+k])
			run = i + k
		} else {
			// Counted as the bytes arrive, not as the header declares
			// them: a frame cut short counts only what came.
			p.flow.bytes.Add(int64(k))
		}
		i += k
		p.left -= int64(k)
		p.pos += k
		if p.left == 0 && p.endFrame() {
			flush(i)
			return true
		}
	}
	flush(len(b))
	return false
}

// startFrame checks the header just read and decides where the frame goes.
func (p *pipe) startFrame() error {
	h := &p.cur
	p.inFrame, p.left, p.pos, p.ctlN = true, h.length, 0, 0
	if h.rsv != 0 || h.masked != (p.src.side == sideClient) {
		// No extension was negotiated on either side, and only a client
		// masks.
		return errProtocol
	}
	forward := !p.dropping && !p.dstBroken
	switch h.opcode {
	case opPing, opPong, opClose:
		if !h.fin || h.length > maxControlPayload {
			return errProtocol
		}
		// Pings and pongs are the two peers' business; a close is the
		// relay's, which answers it and passes it on itself. Where src's
		// words are scrubbed, a ping or pong is read and sent on anew.
		p.verbatim = forward && h.opcode != opClose && p.scrub == nil
		return nil
	case opText, opBinary:
		if p.inMessage {
			return errProtocol
		}
		p.inMessage, p.msgLen = true, 0
		p.gather = h.opcode == opText && p.text != nil && forward
	case opContinuation:
		if !p.inMessage {
			return errProtocol
		}
	default:
		return errProtocol
	}
	// msgLen never passes maxMsg, so the check is written the way round
	// that cannot overflow: a peer declares up to 2^63-1 bytes a frame.
	if h.length > p.maxMsg-p.msgLen {
		return websocket.ErrMessageTooBig
	}
	p.msgLen += h.length
	if p.gather {
		if !p.s.relay.texts.take(p.s.userText, h.length) {
			return errTextBudget
		}
		p.held += h.length
	}
	if p.gather && p.msg == nil {
		p.msgBuf = textBuffers.Get().(*[]byte)
		p.msg = (*p.msgBuf)[:0]
		p.flow.gathering.Store(time.Now().UnixNano())
	}
	p.verbatim = forward && !p.gather
	if p.verbatim && h.fin {
		p.flow.messages.Add(1)
	}
	return nil
}

// payload takes payload bytes of a frame that is not forwarded as it came.
func (p *pipe) payload(b []byte) {
	h := &p.cur
	switch {
	case h.isControl():
		n := copy(p.ctl[p.ctlN:], b)
		if h.masked {
			applyMask(p.ctl[p.ctlN:p.ctlN+n], h.mask, p.pos)
		}
		p.ctlN += n
	case p.gather:
		start := len(p.msg)
		p.msg = append(p.msg, b...)
		if h.masked {
			applyMask(p.msg[start:], h.mask, p.pos)
		}
	}
	// Otherwise the frame is dropped: dst is closing or broken.
}

// endFrame finishes the frame whose payload is all read. It reports true
// when src is to be read no more.
func (p *pipe) endFrame() bool {
	h := &p.cur
	p.inFrame = false
	if h.opcode == opClose {
		code, reason, ok := parseClose(p.ctl[:p.ctlN])
		if !ok {
			p.fail(errProtocol)
			return true
		}
		if !p.dropping {
			if p.scrub != nil {
				reason = string(p.scrub([]byte(reason), maxControlPayload-2))
			}
			p.s.end(closedOutcome(p.src.side, code, reason))
			p.closeDst()
		}
		return true
	}
	if h.isControl() {
		if p.scrub != nil && !p.dropping && !p.dstBroken {
			payload := p.scrub(p.ctl[:p.ctlN], maxControlPayload)
			var frame [maxHeaderLen + maxControlPayload]byte
			p.write(appendFrame(frame[:0], h.opcode, payload, p.dst.side == sideUpstream))
		}
		return false
	}
	if !h.fin {
		return false
	}
	p.inMessage = false
	if p.gather && p.msg != nil {
		msg := p.msg
		p.msg = nil
		defer p.releaseText(p.msgBuf)
		return p.filtered(msg)
	}
	return false
}

// releaseText gives back a gathered message's buffer and its share of the
// text budget.
func (p *pipe) releaseText(buf *[]byte) {
	textBuffers.Put(buf)
	p.s.relay.texts.give(p.s.userText, p.held)
	p.held = 0
	p.flow.gathering.Store(0)
}

// dropGathered gives up the text message being gathered: dst is closing or
// broken, and nothing more goes there.
func (p *pipe) dropGathered() {
	if p.msg != nil {
		p.releaseText(p.msgBuf)
		p.msg, p.msgBuf = nil, nil
	}
	p.gather = false
}

// filtered passes a whole text message through the filter and writes what
// comes out as one frame.
func (p *pipe) filtered(msg []byte) bool {
	v := p.text(msg)
	if v.refused != "" {
		p.s.refuseSettings(v.refused)
		p.closeDst()
		p.dropping = true
		return false
	}
	if v.drop {
		return false
	}
	wb := textBuffers.Get().(*[]byte)
	defer textBuffers.Put(wb)
	frame := appendFrame((*wb)[:0], opText, v.out, p.dst.side == sideUpstream)
	p.write(frame)
	p.flow.messages.Add(1)
	p.flow.bytes.Add(int64(len(v.out)))
	return false
}

// fail ends the session for a frame src should not have sent: too big (1009)
// or over the text budget (1013), when the frame is skipped and src read on
// for its answer, or a protocol error (1002; src is read no more).
func (p *pipe) fail(err error) {
	p.verbatim = false
	p.dropGathered()
	if p.dropping {
		return
	}
	switch {
	case errors.Is(err, websocket.ErrMessageTooBig):
		p.s.end(tooBigOutcome(p.src.side))
	case err == errTextBudget:
		p.s.end(busyOutcome(p.src.side))
	default:
		p.s.end(protocolOutcome(p.src.side))
	}
	p.closeDst()
}

// closeDst writes dst's close, as the session's outcome says, once; from then
// on src is read only for its own close frame.
func (p *pipe) closeDst() {
	p.dropping = true
	p.dropGathered()
	if p.closeSent {
		return
	}
	p.closeSent = true
	if frames := p.s.closeFrames(p.dst.side); frames != nil {
		p.write(frames)
	}
}

// write sends b to dst. A write that fails leaves dst broken: it is closed,
// which wakes the direction reading it to report how that side ended.
func (p *pipe) write(b []byte) {
	if p.dstBroken {
		return
	}
	p.flow.writing.Store(true)
	var err error
	if p.dst.raw != nil {
		p.pending, p.writeErr = b, nil
		if werr := p.dst.raw.Write(p.onWritable); werr != nil && p.writeErr == nil {
			p.writeErr = werr
		}
		p.pending, err = nil, p.writeErr
	} else {
		_, err = p.dst.conn.Write(b)
	}
	p.flow.writing.Store(false)
	if err != nil {
		p.dstBroken, p.dropping = true, true
		p.dropGathered()
		_ = p.dst.conn.Close()
	}
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
