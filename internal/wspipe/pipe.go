package wspipe

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Owner is the session a pipe reports to. Both pipes of a session call it,
// from their own goroutines.
type Owner interface {
	// End starts ending the session as e says; only the first call counts.
	End(e Ending)
	// Closing reports whether End has run. A pipe checks it between frames.
	Closing() bool
	// CloseFor is the close that ends the session toward side to; a zero
	// Code means that side is gone and gets none.
	CloseFor(to Side) Close
	// CloseDeadline is when a closing session stops waiting for its peers.
	CloseDeadline() time.Time
}

// Close is what a pipe writes to close its destination: an in-band Error
// text message first where there is one, then the close frame.
type Close struct {
	Code   int
	Reason string
	Error  []byte
}

// Cause is why a pipe ended its session.
type Cause int

const (
	// Closed: src sent a close frame, with Code and Reason.
	Closed Cause = iota + 1
	// Vanished: src is gone without a close frame.
	Vanished
	// TooBig: src sent a message over Options.MaxMessage.
	TooBig
	// ProtocolError: src sent a frame RFC 6455 forbids.
	ProtocolError
	// Busy: a text message from src would have passed the text budget.
	Busy
	// Refused: the text filter refused a message from src; Why says why.
	Refused
)

// Ending is how a pipe ended its session.
type Ending struct {
	Cause  Cause
	Src    Side
	Code   int    // Closed: src's close code
	Reason string // Closed: src's reason
	Why    string // Refused: what the client is told
}

// Verdict is what a text filter makes of one whole message.
type Verdict struct {
	Out     []byte // what goes on
	Drop    bool   // nothing goes on
	Refused string // non-empty: end the session (Refused), this is why
}

// TextFilter decides what becomes of one whole text message.
type TextFilter func(msg []byte) Verdict

// Budget counts the bytes of text messages a pipe holds while it reads them
// whole: Take reports false, and counts nothing, when n more would pass it.
type Budget interface {
	Take(n int64) bool
	Give(n int64)
}

// Flow counts one direction. Each counter is written by its pipe only;
// atomics let the owner's timers and metrics read them while it runs.
type Flow struct {
	Messages atomic.Int64
	Bytes    atomic.Int64 // payload bytes, counted as they arrive
	// Writing is true while a write to the destination is in progress: a
	// peer that stopped reading shows as a write that does not end.
	Writing atomic.Bool
	// Gathering is when the text message being read whole began (Unix
	// nanoseconds), 0 when none is.
	Gathering atomic.Int64
	// CloseSent is the code of the close written to the destination, 0
	// while none has been (or its write failed): what was sent, not what
	// was meant.
	CloseSent atomic.Int64
}

// Options shape one pipe.
type Options struct {
	// MaxMessage is the largest message src may send, its fragments
	// counted together: at least 1.
	MaxMessage int64
	// Text, when set, reads each text message whole and sends what it
	// returns as one frame; Budget must be set with it.
	Text   TextFilter
	Budget Budget
	// Scrub, when set, cleans a ping or pong payload and a close reason
	// from src, within a byte limit; they are forwarded as they came
	// otherwise.
	Scrub func(b []byte, limit int) []byte
}

// Pipe is one direction of a session. It reads frames from src and is the
// only writer to dst, which is why the two directions need no lock between
// them: the closes and Error messages for dst are written here too.
type Pipe struct {
	owner    Owner
	src, dst *Peer
	flow     *Flow
	opt      Options

	// The frame being read: its header, split across reads when hdrN > 0,
	// and how much of its payload is still to come.
	hdr      [MaxHeaderLen]byte
	hdrN     int
	cur      Header
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
	held      int64 // msg's bytes counted in the budget
	ctl       [MaxControlPayload]byte
	ctlN      int

	// run is what goes to dst as it came and is not written yet: the
	// frames of one read, written together.
	run []byte

	// closeSent: dst's close has been written or given up. dropping: src
	// is read only for its close frame. dstBroken: a write to dst failed,
	// so nothing more goes there.
	closeSent, dropping, dstBroken bool

	io sockIO // the platform's socket calls
}

// New makes the pipe that relays src to dst for owner, counting in flow.
func New(owner Owner, src, dst *Peer, flow *Flow, opt Options) *Pipe {
	return &Pipe{owner: owner, src: src, dst: dst, flow: flow, opt: opt}
}

// Run relays src to dst until src has closed or failed and, once the session
// ends, until dst has been sent its close.
func (p *Pipe) Run() {
	// Whichever way the pipe ends, a message it was gathering goes back to
	// the budget.
	defer p.dropGathered()
	p.io.init(p)
	if early := p.src.early; len(early) > 0 {
		p.src.early = nil
		if p.consume(early) {
			return
		}
	}
	for {
		stop, err := p.readSource()
		if stop {
			return
		}
		if isTimeout(err) && p.owner.Closing() {
			// End woke this read: the close for dst goes now unless a
			// frame to it is half written, and src is given until the
			// deadline to answer.
			if !p.midFrame() {
				p.closeDst()
			}
			if deadline := p.owner.CloseDeadline(); time.Now().Before(deadline) {
				_ = p.src.Conn.SetReadDeadline(deadline)
				continue
			}
			return
		}
		// src is gone without a close frame.
		if !p.dropping {
			p.owner.End(Ending{Cause: Vanished, Src: p.src.Side})
			if p.midFrame() {
				// Half of a frame went to dst, so no close can follow
				// it, and no answer can come: dst is dropped now
				// rather than waited on until the deadline.
				p.dropping, p.closeSent = true, true
				_ = p.dst.Conn.Close()
			} else {
				p.closeDst()
			}
		}
		return
	}
}

// streamBufferSize is the buffer held by a direction whose source can only
// be read through net.Conn (off Linux, or over a connection that is not a
// TCP socket): it is held while waiting. 4 KiB is what coder/websocket held.
const streamBufferSize = 4 << 10

var streamBuffers = bufferPool(streamBufferSize)

// readStream reads a source that has no socket of its own to wait on
// through a held buffer.
func (p *Pipe) readStream() (bool, error) {
	bp := streamBuffers.Get().(*[]byte)
	defer streamBuffers.Put(bp)
	for {
		n, err := p.src.Conn.Read(*bp)
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
func (p *Pipe) midFrame() bool { return p.inFrame && p.verbatim }

// errProtocol is a frame that breaks RFC 6455: the connection is failed
// (§7.1.7).
var errProtocol = errors.New("protocol error")

// errTooBig is a message over the limit: the frame is skipped and src read
// on for its answer to the close.
var errTooBig = errors.New("message too big")

// errBusy is text the pipe would have to hold past its budget.
var errBusy = errors.New("text budget spent")

// consume handles bytes read from src. It reports true when src is to be
// read no more.
func (p *Pipe) consume(b []byte) bool {
	for len(b) > 0 {
		var n int
		var stop bool
		if p.inFrame {
			n, stop = p.readPayload(b)
		} else {
			n, stop = p.readHeader(b)
		}
		if stop {
			p.flush()
			return true
		}
		b = b[n:]
	}
	p.flush()
	return false
}

// readHeader reads a frame header from the start of b, whole there or
// completed from one split across reads, and returns how many bytes of b
// it took.
func (p *Pipe) readHeader(b []byte) (int, bool) {
	if p.owner.Closing() && !p.dropping {
		p.closeDst()
	}
	var n, used int
	var err error
	var raw []byte // the header's bytes, to pass on as they came
	if p.hdrN == 0 {
		n, err = ParseHeader(b, &p.cur)
		if n == 0 && err == nil {
			p.flush() // the run may not end in bytes hdr is about to hold
			p.hdrN = copy(p.hdr[:], b)
			return len(b), false
		}
		used, raw = n, b[:n]
	} else {
		k := copy(p.hdr[p.hdrN:], b)
		n, err = ParseHeader(p.hdr[:p.hdrN+k], &p.cur)
		if n == 0 && err == nil {
			p.hdrN += k
			return len(b), false
		}
		used, raw = n-p.hdrN, p.hdr[:n]
		p.hdrN = 0
	}
	if err == nil {
		err = p.startFrame()
	}
	switch {
	case err == nil:
		if p.verbatim {
			p.pass(raw)
		}
	case err == errTooBig || err == errBusy:
		// The frame is skipped and src read on for its answer.
		p.fail(err)
	default:
		p.fail(err)
		return used, true
	}
	if p.left == 0 {
		return used, p.endFrame()
	}
	return used, false
}

// readPayload takes the payload bytes of the current frame at the start of
// b and returns how many it took.
func (p *Pipe) readPayload(b []byte) (int, bool) {
	k := len(b)
	if int64(k) > p.left {
		k = int(p.left)
	}
	gathered := p.gather && !p.cur.IsControl()
	switch {
	case p.verbatim:
		p.pass(b[:k])
		// Counted as the bytes arrive, not as the header declared them.
		p.flow.Bytes.Add(int64(k))
	case gathered && !p.opt.Budget.Take(int64(k)):
		// The budget is charged for bytes held, as they arrive: a header
		// that declares a megabyte holds nothing until it comes. Past
		// the budget, the rest of the frame is skipped.
		p.fail(errBusy)
	default:
		if gathered {
			p.held += int64(k)
		}
		p.payload(b[:k])
	}
	p.left -= int64(k)
	p.pos += k
	if p.left == 0 {
		return k, p.endFrame()
	}
	return k, false
}

// startFrame checks the header just read and decides where the frame goes.
func (p *Pipe) startFrame() error {
	h := &p.cur
	p.inFrame, p.left, p.pos, p.ctlN = true, h.Length, 0, 0
	p.verbatim = false
	if h.Rsv != 0 || h.Masked != (p.src.Side == Client) {
		// No extension was negotiated on either side, and only a client
		// masks.
		return errProtocol
	}
	forward := !p.dropping && !p.dstBroken
	switch h.Opcode {
	case OpPing, OpPong, OpClose:
		if !h.Fin || h.Length > MaxControlPayload {
			return errProtocol
		}
		// Pings and pongs are the two peers' business; a close is the
		// relay's, which answers it and passes it on itself. Where src's
		// words are scrubbed, a ping or pong is read and sent on anew.
		p.verbatim = forward && h.Opcode != OpClose && p.opt.Scrub == nil
		return nil
	case OpText, OpBinary:
		if p.inMessage {
			return errProtocol
		}
		p.inMessage, p.msgLen = true, 0
		p.gather = h.Opcode == OpText && p.opt.Text != nil && forward
	case OpContinuation:
		if !p.inMessage {
			return errProtocol
		}
	default:
		return errProtocol
	}
	// msgLen never passes MaxMessage, so the check is written the way round
	// that cannot overflow: a peer may declare 2^63-1 bytes a frame.
	if h.Length > p.opt.MaxMessage-p.msgLen {
		return errTooBig
	}
	p.msgLen += h.Length
	if p.gather {
		if p.msg == nil {
			p.msgBuf = textBuffers.Get().(*[]byte)
			p.msg = (*p.msgBuf)[:0]
			p.flow.Gathering.Store(time.Now().UnixNano())
		}
	}
	p.verbatim = forward && !p.gather
	if p.verbatim && h.Fin {
		p.flow.Messages.Add(1)
	}
	return nil
}

// payload takes payload bytes of a frame that is not forwarded as it came.
func (p *Pipe) payload(b []byte) {
	h := &p.cur
	switch {
	case h.IsControl():
		n := copy(p.ctl[p.ctlN:], b)
		if h.Masked {
			Mask(p.ctl[p.ctlN:p.ctlN+n], h.Mask, p.pos)
		}
		p.ctlN += n
	case p.gather:
		start := len(p.msg)
		p.msg = append(p.msg, b...)
		if h.Masked {
			Mask(p.msg[start:], h.Mask, p.pos)
		}
	}
	// Otherwise the frame is dropped: dst is closing or broken, or the
	// frame is too big.
}

// endFrame finishes the frame whose payload is all read. It reports true
// when src is to be read no more.
func (p *Pipe) endFrame() bool {
	h := &p.cur
	p.inFrame = false
	switch {
	case h.Opcode == OpClose:
		code, reason, ok := ParseClose(p.ctl[:p.ctlN])
		if !ok {
			p.fail(errProtocol)
			return true
		}
		if !p.dropping {
			if p.opt.Scrub != nil {
				reason = string(p.opt.Scrub([]byte(reason), MaxCloseReason))
			}
			p.owner.End(Ending{Cause: Closed, Src: p.src.Side, Code: code, Reason: reason})
			p.closeDst()
		}
		return true
	case h.IsControl():
		if p.opt.Scrub != nil && !p.dropping && !p.dstBroken {
			// A scrubbed ping or pong, sent on anew.
			payload := p.opt.Scrub(p.ctl[:p.ctlN], MaxControlPayload)
			p.write(AppendFrame(make([]byte, 0, MaxHeaderLen+len(payload)), h.Opcode, payload, p.dst.Side == Upstream))
		}
		return false
	case !h.Fin:
		return false
	}
	p.inMessage = false
	if p.gather && p.msg != nil {
		// The message is whole: from here a slow write is the
		// destination's, not a message left unfinished by src.
		p.flow.Gathering.Store(0)
		msg := p.msg
		p.msg = nil
		defer p.releaseText(p.msgBuf)
		return p.filtered(msg)
	}
	return false
}

// releaseText gives back a gathered message's buffer and its bytes in the
// budget.
func (p *Pipe) releaseText(buf *[]byte) {
	textBuffers.Put(buf)
	p.opt.Budget.Give(p.held)
	p.held = 0
	p.flow.Gathering.Store(0)
}

// dropGathered gives up the text message being gathered: dst is closing or
// broken, and nothing more goes there.
func (p *Pipe) dropGathered() {
	if p.msg != nil {
		p.releaseText(p.msgBuf)
		p.msg, p.msgBuf = nil, nil
	}
	p.gather = false
}

// filtered passes a whole text message through the filter and writes what
// comes out as one frame.
func (p *Pipe) filtered(msg []byte) bool {
	v := p.opt.Text(msg)
	if v.Refused != "" {
		p.owner.End(Ending{Cause: Refused, Src: p.src.Side, Why: v.Refused})
		p.closeDst()
		return false
	}
	if v.Drop {
		return false
	}
	wb := textBuffers.Get().(*[]byte)
	defer textBuffers.Put(wb)
	p.write(AppendFrame((*wb)[:0], OpText, v.Out, p.dst.Side == Upstream))
	p.flow.Messages.Add(1)
	p.flow.Bytes.Add(int64(len(v.Out)))
	return false
}

// fail ends the session for a frame src should not have sent.
func (p *Pipe) fail(err error) {
	p.verbatim = false
	p.dropGathered()
	if p.dropping {
		return
	}
	cause := ProtocolError
	switch err {
	case errTooBig:
		cause = TooBig
	case errBusy:
		cause = Busy
	}
	p.owner.End(Ending{Cause: cause, Src: p.src.Side})
	p.closeDst()
}

// closeDst writes dst's close, as the owner says, once; from then on src is
// read only for its own close frame.
func (p *Pipe) closeDst() {
	p.dropping = true
	p.dropGathered()
	if p.closeSent {
		return
	}
	p.closeSent = true
	c := p.owner.CloseFor(p.dst.Side)
	if c.Code == 0 {
		return
	}
	masked := p.dst.Side == Upstream
	var b []byte
	if c.Error != nil {
		b = AppendFrame(b, OpText, c.Error, masked)
	}
	p.write(AppendFrame(b, OpClose, ClosePayload(c.Code, c.Reason), masked))
	if !p.dstBroken {
		p.flow.CloseSent.Store(int64(c.Code))
	}
}

// pass queues bytes that go to dst as they came. Bytes that follow the run
// in src's buffer join it, so the frames of one read go in one write.
func (p *Pipe) pass(b []byte) {
	if n := len(p.run); n > 0 && cap(p.run) > n && len(b) > 0 && &p.run[:n+1][n] == &b[0] {
		p.run = p.run[:n+len(b)]
		return
	}
	p.flush()
	p.run = b
}

// flush writes the run.
func (p *Pipe) flush() {
	if len(p.run) > 0 {
		run := p.run
		p.run = nil
		p.writeDst(run)
	}
}

// write sends one of the relay's own frames to dst, after the run.
func (p *Pipe) write(b []byte) {
	p.flush()
	p.writeDst(b)
}

// writeDst sends b to dst. A write that fails leaves dst broken: it is
// closed, which wakes the direction reading it to report how that side
// ended.
func (p *Pipe) writeDst(b []byte) {
	if p.dstBroken {
		return
	}
	p.flow.Writing.Store(true)
	err := p.io.write(p, b)
	p.flow.Writing.Store(false)
	if err != nil {
		p.dstBroken, p.dropping = true, true
		p.dropGathered()
		_ = p.dst.Conn.Close()
	}
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
