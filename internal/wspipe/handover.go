package wspipe

import (
	"sync"
	"sync/atomic"
	"time"
)

// A session can go on over a new upstream connection when its first one ends
// (the relay's continuation: the conversation is carried to a new Deepgram
// connection). Both pipes take part, each from its own goroutine:
//
//   - The pipe reading the upstream asks Options.Move when its source ends
//     and, given a new peer, reads that one from then on.
//   - The pipe writing to the upstream has a Handover. While a move is under
//     way it holds the messages its source sends, from the next message
//     boundary, up to a bound; Complete writes them to the new peer, and the
//     pipe writes there from then on. A message already begun toward the old
//     peer is cut from the new one: its rest is dropped.
//
// In steady state this costs an atomic load per frame of the writing pipe.

// moveWakeStep is how often a pipe woken for a move mid-message looks again
// for the message's end.
const moveWakeStep = 20 * time.Millisecond

// Moved is what Options.Move gives a pipe whose upstream ended: the new peer
// to read, and a text message for the client (written first), if any.
type Moved struct {
	Peer *Peer
	Tell []byte
}

// Handover moves a pipe's destination to a new peer while the pipe runs. One
// session's mover calls Hold, then Complete or Cancel; the pipe does the rest.
type Handover struct {
	// gen changes at every Hold, Complete and Cancel: the pipe compares it
	// with the one it last acted on, at every frame it starts.
	gen atomic.Uint32

	mu      sync.Mutex
	holding bool
	held    []byte
	limit   int
	// msgStart is where the held message being appended began in held,
	// so that one over the limit can be taken out whole.
	msgStart int
	next     *Peer // the peer to write to, once Complete has run
	// Dropped counts the messages a move cost: over the hold's limit, or
	// begun toward the old peer; TextDropped those of them that were
	// text (a session's own messages, which it may need to know lost).
	Dropped, TextDropped atomic.Int64
	// Held counts the bytes held in the last move, for its log line.
	Held atomic.Int64
}

// NewHandover is a Handover that holds at most limit bytes of messages, and
// text messages HoldTextExtra bytes past it: audio is what fills a hold, and
// a text message (an update, a function's answer) matters more than a few
// milliseconds of it.
func NewHandover(limit int) *Handover { return &Handover{limit: limit} }

// HoldTextExtra is how far past its limit a Handover holds text messages.
const HoldTextExtra = 64 << 10

// Hold starts a move: from its next message boundary the pipe holds what it
// would write. A hold under way goes on.
func (h *Handover) Hold() {
	h.mu.Lock()
	if h.holding {
		h.mu.Unlock()
		return
	}
	h.holding, h.held, h.msgStart = true, nil, 0
	h.Held.Store(0)
	h.gen.Add(1)
	h.mu.Unlock()
}

// Complete ends a move: what was held is written to next, by the deadline,
// and the pipe writes there from its next frame. The error is the write's;
// the pipe's messages are then lost with next.
func (h *Handover) Complete(next *Peer, deadline time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var err error
	if len(h.held) > 0 {
		_ = next.Conn.SetWriteDeadline(deadline)
		_, err = next.Conn.Write(h.held)
		_ = next.Conn.SetWriteDeadline(time.Time{})
	}
	h.Held.Store(int64(len(h.held)))
	h.holding, h.held, h.next = false, nil, next
	h.gen.Add(1)
	return err
}

// Cancel ends a move that failed: what was held is dropped and the pipe
// writes on to its old peer (which is gone: the session is ending).
func (h *Handover) Cancel() {
	h.mu.Lock()
	h.holding, h.held = false, nil
	h.gen.Add(1)
	h.mu.Unlock()
}

// route is where the message a pipe is writing goes.
type route uint8

const (
	toDst  route = iota // dst, as without a Handover
	toHold              // the Handover's held bytes
	toNone              // nowhere: begun toward a peer that was left
)

// handoverFrame is called, with a Handover, at the start of every frame: at a
// message boundary (a data frame that is not a continuation) it decides
// where the message goes. It returns false when the frame goes nowhere.
func (p *Pipe) handoverFrame(messageStart, text bool) bool {
	h := p.opt.Handover
	if g := h.gen.Load(); g != p.hoGen {
		// A move began or ended: the run so far goes where it was
		// going before anything of this frame joins it.
		p.flush()
		h.mu.Lock()
		p.hoGen = g
		if h.next != nil && h.next != p.dst {
			// Complete ran: what began toward the old peer goes
			// nowhere, what begins now goes to the new one.
			p.dst, p.dstBroken, p.dstMidMessage = h.next, false, false
			if p.route == toDst && p.inMessage && !p.gather {
				// Its first frames went to the old peer.
				p.route = toNone
			}
		}
		p.holdStarts = h.holding
		h.mu.Unlock()
	}
	if messageStart {
		r := toDst
		if p.holdStarts {
			r = toHold
		}
		if r != toDst || p.route != toDst {
			// The run so far (the end of the last message) goes
			// where that message went, and a held message's start
			// is known.
			p.flush()
			p.route = r
		}
		p.holdText = text
		if r == toHold {
			h.mu.Lock()
			h.msgStart = len(h.held)
			h.mu.Unlock()
		}
	}
	return p.route != toNone
}

// holdWrite appends b to the held bytes, unless the move has completed since
// the message began (b then goes to the new peer) or the message would pass
// the limit (it is then dropped whole).
func (p *Pipe) holdWrite(b []byte) {
	h := p.opt.Handover
	h.mu.Lock()
	if !h.holding {
		// Complete (or Cancel) ran since this message began: the held
		// part went ahead of it, so the rest follows to the new peer.
		next := h.next
		p.hoGen = h.gen.Load()
		h.mu.Unlock()
		p.route = toDst
		if next != nil && next != p.dst {
			p.dst, p.dstBroken, p.dstMidMessage = next, false, false
		}
		p.writeDst(b)
		return
	}
	limit := h.limit
	if p.holdText {
		limit += HoldTextExtra
	}
	if len(h.held)+len(b) > limit {
		h.held = h.held[:h.msgStart]
		h.mu.Unlock()
		p.route = toNone
		h.Dropped.Add(1)
		if p.holdText {
			h.TextDropped.Add(1)
		}
		return
	}
	h.held = append(h.held, b...)
	h.mu.Unlock()
}

// move asks the owner for a new source in place of the one that ended as e
// says, and keeps what it gives for switchSource. It reports whether there
// is one.
func (p *Pipe) move(e Ending) bool {
	if p.opt.Move == nil || p.owner.Closing() || p.midFrame() || p.dstMidMessage {
		return false
	}
	p.moved = p.opt.Move(e)
	return p.moved != nil
}

// switchSource makes the peer a move gave the pipe's source: what was read of
// the old one and not finished is dropped, the new one's early bytes are
// relayed, and the client is told first if the move says so. It reports
// whether src is to be read no more.
func (p *Pipe) switchSource() bool {
	m := p.moved
	p.moved = nil
	p.unwatchSource()
	p.dropGathered()
	p.hdrN, p.inFrame, p.left, p.inMessage, p.verbatim = 0, false, 0, false, false
	_ = p.src.Conn.Close()
	p.src = m.Peer
	p.watchSource()
	if len(m.Tell) > 0 {
		wb := textBuffers.Get().(*[]byte)
		p.write(AppendFrame((*wb)[:0], OpText, m.Tell, p.dst.Side == Upstream))
		textBuffers.Put(wb)
		p.flow.Messages.Add(1)
	}
	if early := p.src.early; len(early) > 0 {
		p.src.early = nil
		return p.consume(early)
	}
	return false
}
