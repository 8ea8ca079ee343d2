package wspipe

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A pipe would have to read its source until EAGAIN after every message to
// be sure of seeing the peer leave, and that second recvfrom per message is
// one nginx does not make. A short read already says the socket was empty at
// that moment: whatever arrives after it gives the runtime's edge-triggered
// poller a new edge, and so wakes the pipe. Except a hangup that came with
// the last bytes: a FIN or RST that reaches the socket after the data's edge
// and before the poller collects it adds no edge of its own, so a pipe that
// stopped at the short read would wait on a socket that has ended. nginx
// learns of it from the EPOLLRDHUP flag of that one event; Go's poller does
// not pass the flags on.
//
// So the sockets pipes read are also watched, for hangups only, in an epoll
// set of our own: registered for EPOLLRDHUP (EPOLLERR and EPOLLHUP come
// with every registration), it is not woken by data at all, only by a peer
// that ends, and costs nothing per message. The one goroutine that waits on
// it marks the peer hung up and shuts its socket for reading, which changes
// nothing the peer can still send (it has sent its last) but wakes the
// runtime's poller with a fresh edge: the pipe wakes, reads what is left and
// then the end. A marked peer is read until EAGAIN again, as before.
//
// A socket the watch cannot take is read until EAGAIN after every message.
//
// EPOLLERR is also reported for a socket whose error queue holds something:
// MSG_ZEROCOPY completions or SO_TIMESTAMPING stamps. Neither is used on
// these sockets; a change that turned one on would have every completion
// read as a hangup here.

// hangupWatch is the process's watch. The goroutine that waits on it runs
// while any socket is watched, and is gone when none is.
var hangupWatch watchSet

// watchSet is an epoll set that reports hangups, and the peers it watches.
type watchSet struct {
	mu    sync.Mutex
	ep    *os.File      // the epoll set; nil while nothing is watched
	epfd  int           // ep's descriptor (os.File.Fd would make it blocking)
	done  chan struct{} // closed when ep's goroutine has returned
	slots []watchSlot
	free  []uint32
	live  int
}

// watchSlot is one watched peer. gen tells a slot's peers apart over time:
// an event carries its registration's slot and gen, so an event from a
// socket whose pipe has ended (its socket still open) reaches no one.
type watchSlot struct {
	peer *Peer
	gen  uint32
}

// hangupState is a peer's part in the watch.
type hangupState struct {
	// watched: the peer's socket is in the watch, so its pipe may stop
	// reading at a short read.
	watched bool
	slot    uint32
	// hungUp is set by the watch when the socket has ended; from then on
	// the pipe reads it until EAGAIN (which it will not meet: the end
	// comes first). woken makes the wake-up once: the shutdown that wakes
	// the pipe is itself a hangup event.
	hungUp, woken atomic.Bool
}

// drained reports whether a read of n bytes into a buffer of size bytes
// has emptied the peer's socket, as far as the pipe need know: a short read, on
// a socket whose hangup the watch would report.
func (h *hangupState) drained(n, size int) bool {
	return n < size && h.watched && !h.hungUp.Load()
}

// testNoHangupWake, set by a test, leaves the watch marking peers but not
// waking their pipes: what a pipe that stops at short reads would do
// without the watch.
var testNoHangupWake bool

// watch adds p's socket, fd, to the set. Off the set, p is read until EAGAIN.
func (w *watchSet) watch(p *Peer, fd int) {
	w.mu.Lock()
	var stale *os.File
	defer func() {
		w.mu.Unlock()
		if stale != nil {
			_ = stale.Close()
		}
	}()
	if w.ep == nil {
		if err := w.open(); err != nil {
			return
		}
	}
	var i uint32
	if n := len(w.free); n > 0 {
		i, w.free = w.free[n-1], w.free[:n-1]
	} else {
		i = uint32(len(w.slots))
		w.slots = append(w.slots, watchSlot{})
	}
	s := &w.slots[i]
	s.gen++
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(i), Pad: int32(s.gen)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.free = append(w.free, i)
		if w.live == 0 {
			// Its goroutine is not waited for: it may be taking w.mu.
			stale, _ = w.shut()
		}
		return
	}
	s.peer = p
	p.hang.slot, p.hang.watched = i, true
	w.live++
}

// unwatch takes p out of the set's count; its socket leaves the epoll set
// when it is closed. The last one out stops the set's goroutine, and waits
// for it.
func (w *watchSet) unwatch(p *Peer) {
	if !p.hang.watched {
		return
	}
	w.mu.Lock()
	p.hang.watched = false
	s := &w.slots[p.hang.slot]
	s.peer = nil
	s.gen++ // a late event of p's registration is no one's
	w.free = append(w.free, p.hang.slot)
	w.live--
	var ep *os.File
	var done chan struct{}
	if w.live == 0 {
		ep, done = w.shut()
	}
	w.mu.Unlock()
	if ep != nil {
		_ = ep.Close()
		<-done
	}
}

// open makes the epoll set and starts its goroutine; w.mu is held.
func (w *watchSet) open() error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("hangup watch: epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile gives it to the runtime's poller:
	// the goroutine waits for the set to have events holding no thread.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("hangup watch: %w", err)
	}
	f := os.NewFile(uintptr(fd), "hangup-watch")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return fmt.Errorf("hangup watch: %w", err)
	}
	w.ep, w.epfd, w.done = f, fd, make(chan struct{})
	go w.run(rc, w.done)
	return nil
}

// shut takes the epoll set out of w, for the caller to close once w.mu is
// unlocked (Close waits for the set's goroutine to let go of it, which may
// be waiting for w.mu), and returns the channel closed when that goroutine
// has returned; w.mu is held.
func (w *watchSet) shut() (*os.File, chan struct{}) {
	f, done := w.ep, w.done
	w.ep, w.done = nil, nil
	return f, done
}

// run waits on the set until it is closed, and wakes the pipe of every peer
// that hangs up.
func (w *watchSet) run(rc interface {
	Read(func(fd uintptr) bool) error
}, done chan struct{}) {
	defer close(done)
	var events [64]unix.EpollEvent
	_ = rc.Read(func(fd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(fd), events[:], 0)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				return true
			case n == 0:
				// Drained: the runtime's poller, edge-triggered on
				// the set, wakes this again when it has more.
				return false
			}
			for _, ev := range events[:n] {
				if p := w.peerOf(ev); p != nil {
					p.wakeHungUp()
				}
			}
		}
	})
}

// peerOf is the peer an event is about, nil when its pipe has ended.
func (w *watchSet) peerOf(ev unix.EpollEvent) *Peer {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := uint32(ev.Fd)
	if int(i) >= len(w.slots) || w.slots[i].gen != uint32(ev.Pad) {
		return nil
	}
	return w.slots[i].peer
}

// wakeHungUp marks p hung up and wakes its pipe, once.
func (p *Peer) wakeHungUp() {
	p.hang.hungUp.Store(true)
	if testNoHangupWake || p.hang.woken.Swap(true) {
		return
	}
	raw := p.sock.polled()
	// Through the connection, not a bare descriptor number, so that a
	// socket closed meanwhile is not touched (nor its number's next
	// owner). SHUT_RD on a socket whose peer has sent its last changes
	// nothing that is left to read: it wakes its waiters.
	_ = raw.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RD) })
}
