package wspipe

// closeDst writes dst's close, as the owner says, once; from then on src is
// read only for its own close frame.
func (p *Pipe) closeDst() {
	p.dropping = true
	p.dropGathered()
	if p.closeSent {
		return
	}
	p.closeSent = true
	if p.opt.Handover != nil {
		// A close may come between a message's frames: one cut by a
		// move does not keep it from the new peer.
		if p.handoverFrame(true, false); p.route == toNone {
			p.route = toDst
		}
	}
	c := p.owner.CloseFor(p.dst.Side)
	if c.Code == 0 {
		return
	}
	masked := p.dst.Side == Upstream
	var b []byte
	// A text message may not begin while dst is inside another whose
	// first frames went on as they came: the Error message is left out
	// then (a close frame may come between fragments).
	if c.Error != nil && !p.dstMidMessage {
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
	switch {
	case p.route == toHold:
		p.holdWrite(b)
		return
	case p.route == toNone, p.dstBroken:
		return
	}
	p.flow.Writing.Store(true)
	err := p.io.write(p, b)
	p.flow.Writing.Store(false)
	if err != nil && p.opt.Handover != nil && !p.owner.Closing() {
		// The upstream may be moved to a new peer: the pipe reads on,
		// and what it reads goes nowhere until a move holds it.
		p.dstBroken = true
		_ = p.dst.Conn.Close()
		return
	}
	if err != nil {
		p.dstBroken, p.dropping = true, true
		p.dropGathered()
		_ = p.dst.Conn.Close()
	}
}
