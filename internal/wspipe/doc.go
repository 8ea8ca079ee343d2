// Package wspipe relays RFC 6455 frames from one socket to another, the way
// nginx does once both handshakes are done: a browser's frames are masked
// client frames, which is what Deepgram expects from a relay, and Deepgram's
// are unmasked server frames, which is what the browser expects. Each
// direction is a Pipe that reads only frame headers, for the message size
// limit, the counters and the close handshake; payload bytes go from one
// socket to the other in the read that brought them, one read and one write
// for a frame that arrives whole. Text is read in full only where a filter
// (a Settings policy, a secret scrub) must see it.
//
// A Pipe holds no buffer while it waits: on Linux it waits on the socket's
// readiness and borrows a buffer per read, also under TLS (see NewTLSSocket).
//
// The package knows frames and sockets, not sessions: it reports to an Owner
// how its direction ended, asks it what close to write, and leaves the
// handshakes, the timers and the policy to the caller. It imports no
// WebSocket library.
package wspipe
