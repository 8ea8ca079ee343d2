package wspipe

import (
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
	// Last: the filter needs to see no more; src's later text messages
	// go on as they come, unread (as without a filter).
	Last bool
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
	// Move, on the pipe reading the upstream, is asked when src ends
	// (a close frame, or gone without one) while the session is not
	// closing and no frame to dst is half written. A non-nil result is
	// the peer to read from then on; nil ends the session as without it.
	Move func(e Ending) *Moved
	// Handover, on the pipe writing to the upstream, lets a move give it
	// a new destination (see Handover).
	Handover *Handover
}
