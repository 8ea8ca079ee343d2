package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"dgrelay/internal/message"
	"dgrelay/internal/wspipe"
)

// moveHandshakeTimeout bounds a move's exchange with the new Deepgram
// connection, from the upgrade to SettingsApplied.
const moveHandshakeTimeout = 10 * time.Second

// continuedCode is the Warning code that tells the client its conversation
// moved to a new Deepgram connection (docs/answers.md). Apps may ignore it:
// the call goes on.
const continuedCode = "SESSION_CONTINUED"

// moveFailedDescription is the UPSTREAM_GONE Error's description when no new
// Deepgram connection could take the call over.
const moveFailedDescription = "Deepgram's connection ended and a new one could not take the call over"

// moveUpstream is Options.Move of the pipe reading Deepgram: on its goroutine,
// when the connection ended as e says, it carries the session to a new one
// and returns it, or returns nil for the session to end. While it runs the
// client's messages are held (the Handover), and nothing reaches the client.
func (s *session) moveUpstream(e wspipe.Ending) *wspipe.Moved {
	c := s.cont
	reason := c.reasonFor(e)
	if reason == "" || s.Closing() {
		return nil
	}
	m := s.tools.metrics
	start := time.Now()
	if !c.allowMove(start) {
		m.upstreamMoves.WithLabelValues(reason, "too_many").Inc()
		s.end(endMoveFailed.outcome(fmt.Sprintf("Deepgram's connection ended and the relay has moved this call %d times in the last hour", maxMovesPerHour)))
		return nil
	}
	epoch, textDropped := c.hold()
	defer c.released()
	peer, requestID, turns, err := s.reconnect()
	if err == nil {
		err = c.handover.Complete(peer, time.Now().Add(s.tools.cfg.WriteTimeout))
	}
	if err == nil && s.Closing() {
		err = errors.New("the session ended during the move")
	}
	gap := time.Since(start)
	if err != nil {
		c.handover.Cancel()
		if peer != nil {
			_ = peer.Conn.Close()
		}
		if s.Closing() {
			// The client left, or the drain ended the call: not a
			// failure of the move's.
			m.upstreamMoves.WithLabelValues(reason, "cancelled").Inc()
			s.log().Info("upstream move cancelled: the session ended", "session", s.id, "reason", reason, "ms", gap.Milliseconds())
			return nil
		}
		m.upstreamMoves.WithLabelValues(reason, "failed").Inc()
		s.log().Info("upstream move failed", "session", s.id, "reason", reason, "ms", gap.Milliseconds(), "error", s.tools.redact(err.Error()))
		s.end(endMoveFailed.outcome(moveFailedDescription))
		return nil
	}
	s.mu.Lock()
	s.upstream = peer
	s.dgRequestID = requestID
	s.moves++
	s.mu.Unlock()
	// Its lines carry the new connection's id from here on, its end line
	// and record every connection's.
	s.movedTo(requestID)
	c.moved()
	c.record.moved(epoch, c.handover.TextDropped.Load() != textDropped)
	// Calls asked on the old connection cannot be answered on the new
	// one: Deepgram there did not ask them.
	s.conversation.forget(func(string) bool { return true })
	m.upstreamMoves.WithLabelValues(reason, "ok").Inc()
	m.upstreamMoveGap.Observe(gap.Seconds())
	s.log().Info("upstream moved", "session", s.id, "reason", reason, "ms", gap.Milliseconds(),
		"turns", turns, "held_bytes", c.handover.Held.Load(), "dropped_messages", c.handover.Dropped.Load(),
		"dg_request_id", requestID)
	return &wspipe.Moved{Peer: peer, Tell: warningFrame(continuedCode,
		"Deepgram's connection ended ("+reason+"); the relay carried the conversation to a new one")}
}

// reconnect dials Deepgram again for s, as the session was first dialled
// (its URL and query), and does the agent's opening on the bare connection:
// the session's Settings, with the conversation, goes out, and Welcome and
// SettingsApplied, which the client must not see twice, are read here. It
// returns the new peer, Deepgram's request id and how many turns went.
func (s *session) reconnect() (*wspipe.Peer, string, int, error) {
	settings, turns, err := s.cont.record.resumeSettings()
	if err != nil {
		return nil, "", 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), moveHandshakeTimeout)
	defer cancel()
	// The session ending (the client leaving, the drain) cuts it short.
	ended := s.endedSignal()
	go func() {
		select {
		case <-ended:
			cancel()
		case <-ctx.Done():
		}
	}()
	d := s.redial(ctx)
	if d.failure != nil {
		return nil, "", 0, errors.New(d.failure.description)
	}
	d.handoff.release(d.conn)
	conn, early := d.handoff.Conn, d.handoff.early
	requestID := d.requestID
	defer context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(wspipe.AppendFrame(nil, wspipe.OpText, settings, true)); err != nil {
		_ = conn.Close()
		return nil, "", 0, err
	}
	r := &frameReader{conn: conn, buf: early, limit: s.tools.cfg.MaxMessageBytes}
	for {
		op, msg, err := r.next()
		if err != nil {
			_ = conn.Close()
			return nil, "", 0, err
		}
		if op != wspipe.OpText {
			continue // a ping is answered by nobody: Deepgram does not ping first
		}
		switch string(message.Type(msg)) {
		case "Welcome":
			var w struct {
				RequestID string `json:"request_id"`
			}
			if json.Unmarshal(msg, &w) == nil && s.tools.requestIDOK(w.RequestID) {
				requestID = w.RequestID
			}
		case "SettingsApplied":
			_ = conn.SetDeadline(time.Time{})
			return wspipe.NewPeer(conn, r.buf, wspipe.Upstream), requestID, turns, nil
		case "Error":
			_ = conn.Close()
			return nil, "", 0, fmt.Errorf("the carried Settings was refused by Deepgram: %s", s.tools.scrub.Clean(string(msg)))
		}
	}
}

// frameReader reads whole messages of Deepgram's (unmasked) frames from a
// bare connection, starting with bytes already read; what it has read past
// the last message stays in buf.
type frameReader struct {
	conn  net.Conn
	buf   []byte
	limit int64
}

// next is the next message: its opcode and payload, fragments joined;
// control frames come alone.
func (r *frameReader) next() (byte, []byte, error) {
	var msg []byte
	var op byte
	for {
		var h wspipe.Header
		n, err := wspipe.ParseHeader(r.buf, &h)
		if err != nil {
			return 0, nil, err
		}
		if n == 0 || int64(len(r.buf)-n) < h.Length {
			if n > 0 && h.Length > r.limit {
				return 0, nil, errors.New("message too big")
			}
			if err := r.fill(); err != nil {
				return 0, nil, err
			}
			continue
		}
		if h.Masked {
			return 0, nil, errors.New("a masked frame from Deepgram")
		}
		payload := r.buf[n : n+int(h.Length)]
		r.buf = r.buf[n+int(h.Length):]
		if h.IsControl() {
			if h.Opcode == wspipe.OpClose {
				return 0, nil, errors.New("the new connection was closed by Deepgram")
			}
			continue
		}
		if h.Opcode != wspipe.OpContinuation {
			op = h.Opcode
		}
		if int64(len(msg))+h.Length > r.limit {
			return 0, nil, errors.New("message too big")
		}
		msg = append(msg, payload...)
		if h.Fin {
			return op, msg, nil
		}
	}
}

// fill reads more of the connection into buf.
func (r *frameReader) fill() error {
	var chunk [4096]byte
	n, err := r.conn.Read(chunk[:])
	r.buf = append(r.buf[:len(r.buf):len(r.buf)], chunk[:n]...)
	if n == 0 && err == nil {
		err = io.ErrNoProgress
	}
	if n > 0 {
		return nil
	}
	return err
}
