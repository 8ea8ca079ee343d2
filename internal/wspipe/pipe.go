package wspipe

import (
	"errors"
	"net"
	"time"
)

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
	textDone  bool    // the filter asked for no more messages (Verdict.Last)
	msgBuf    *[]byte // the pooled buffer msg started in
	msg       []byte
	held      int64 // msg's bytes counted in the budget
	ctl       [MaxControlPayload]byte
	ctlN      int

	// run is what goes to dst as it came and is not written yet: the
	// frames of one read, written together.
	run []byte

	// dstMidMessage: dst has been sent the first frames of a message and
	// not yet its last. closeDue: the session ended while a frame to dst
	// was half written, and dst's close goes as soon as the frame is whole.
	dstMidMessage, closeDue bool

	// closeSent: dst's close has been written or given up. dropping: src
	// is read only for its close frame. dstBroken: a write to dst failed,
	// so nothing more goes there.
	closeSent, dropping, dstBroken bool

	io sockIO // the platform's socket calls

	// With a Handover (the pipe writing to the upstream): the generation
	// last acted on, whether messages from now on are held, and where the
	// current message goes.
	hoGen      uint32
	holdStarts bool
	route      route
	holdText   bool // the current message is text
	// With Options.Move (the pipe reading the upstream): the peer a move
	// gave, switched to once the read that ended the old one returns.
	moved *Moved
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
	p.watchSource()
	defer p.unwatchSource()
	if early := p.src.early; len(early) > 0 {
		p.src.early = nil
		if p.consume(early) {
			return
		}
	}
	for {
		stop, err := p.readSource()
		if p.moved != nil {
			if p.switchSource() {
				return
			}
			continue
		}
		if stop || !p.readAgain(err) {
			return
		}
	}
}

// readAgain handles a read of src that ended with err, and reports whether
// src is to be read again. Apart from Run so that the frame an idle pipe
// waits in stays small: the GC gives a goroutine's stack back only when
// little of it is in use.
func (p *Pipe) readAgain(err error) bool {
	if isTimeout(err) && p.owner.Closing() {
		// End woke this read: the close for dst goes now unless a frame
		// to it is half written, and src is given until the deadline to
		// answer.
		if p.midFrame() {
			p.closeDue = true // written once the frame is whole
		} else {
			p.closeDst()
		}
		if deadline := p.owner.CloseDeadline(); time.Now().Before(deadline) {
			_ = p.src.Conn.SetReadDeadline(deadline)
			return true
		}
		return false
	}
	if isTimeout(err) && p.opt.Move != nil && !p.dropping && (p.midFrame() || p.dstMidMessage) {
		// The owner woke the pipe for a move (the only read deadline
		// but the session's end) while a message to dst is half
		// written: it reads on to the message's end, waking now and
		// then to look again.
		_ = p.src.Conn.SetReadDeadline(time.Now().Add(moveWakeStep))
		return true
	}
	// src is gone without a close frame.
	if !p.dropping {
		if p.move(Ending{Cause: Vanished, Src: p.src.Side}) {
			return !p.switchSource()
		}
		p.owner.End(Ending{Cause: Vanished, Src: p.src.Side})
		if p.midFrame() {
			// Half of a frame went to dst, so no close can follow it,
			// and no answer can come: dst is dropped now rather than
			// waited on until the deadline.
			p.dropping, p.closeSent = true, true
			_ = p.dst.Conn.Close()
		} else {
			p.closeDst()
		}
	}
	return false
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

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
