package wspipe

import "time"

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
		stop := p.endFrame()
		if p.closeDue && !stop {
			// Src may send nothing more; dst must not wait for it.
			p.closeDst()
		}
		return k, stop
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
	if p.opt.Handover != nil {
		// A move may hold this frame, or drop it, or send it to a new
		// peer; a broken dst is the old peer's, gone with it.
		forward = p.handoverFrame(!p.inMessage, h.Opcode == OpText) && !p.dropping && (!p.dstBroken || p.route == toHold)
	}
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
		p.gather = h.Opcode == OpText && p.opt.Text != nil && !p.textDone && forward
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
	if p.verbatim {
		// dst has this message's first frames until its last comes.
		p.dstMidMessage = !h.Fin
		if h.Fin {
			p.flow.Messages.Add(1)
		}
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
	p.inFrame = false
	switch {
	case p.cur.IsControl():
		return p.endControl()
	case !p.cur.Fin:
		return false
	}
	p.inMessage = false
	if p.gather && p.msg != nil {
		return p.endGathered()
	}
	return false
}

// endControl finishes a close, ping or pong frame. Apart from endFrame so
// that its locals are not on the stack of every message: an idle session's
// goroutines keep the stack their deepest frame grew.
func (p *Pipe) endControl() bool {
	h := &p.cur
	if h.Opcode == OpClose {
		code, reason, ok := ParseClose(p.ctl[:p.ctlN])
		if !ok {
			p.fail(errProtocol)
			return true
		}
		if !p.dropping {
			if p.opt.Scrub != nil {
				reason = string(p.opt.Scrub([]byte(reason), MaxCloseReason))
			}
			e := Ending{Cause: Closed, Src: p.src.Side, Code: code, Reason: reason}
			if p.move(e) {
				return true // Run switches to the new peer
			}
			p.owner.End(e)
			p.closeDst()
		}
		return true
	}
	if p.opt.Scrub != nil && !p.dropping && !p.dstBroken {
		// A scrubbed ping or pong, sent on anew.
		payload := p.opt.Scrub(p.ctl[:p.ctlN], MaxControlPayload)
		p.write(AppendFrame(make([]byte, 0, MaxHeaderLen+len(payload)), h.Opcode, payload, p.dst.Side == Upstream))
	}
	return false
}

// endGathered passes a whole gathered message through the filter.
func (p *Pipe) endGathered() bool {
	// The message is whole: from here a slow write is the destination's,
	// not a message left unfinished by src.
	p.flow.Gathering.Store(0)
	msg, buf := p.msg, p.msgBuf
	p.msg = nil
	stop := p.filtered(msg)
	p.releaseText(buf)
	return stop
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
	p.textDone = v.Last
	if v.Refused != "" {
		p.owner.End(Ending{Cause: Refused, Src: p.src.Side, Why: v.Refused})
		p.closeDst()
		return false
	}
	if v.Drop {
		return false
	}
	if p.opt.Handover != nil && (!p.handoverFrame(true, true) || (p.dstBroken && p.route != toHold)) {
		return false // the message goes nowhere: a move cut it
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
