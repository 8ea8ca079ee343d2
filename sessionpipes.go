package main

import "dgrelay/internal/wspipe"

// runPipes relays both directions until each has finished, then closes both
// connections: the two pipes of the session, one on the calling goroutine,
// the other on its own. The first to end the session wakes the other.
func (s *session) runPipes() {
	up, down := s.pipes()
	done := make(chan struct{})
	go func() {
		defer close(done)
		down.Run()
	}()
	up.Run()
	<-done
	s.kill()
}

// pipes makes the session's two pipes. Apart from runPipes, like the
// accounting in relay.started and finished, so that the frames an idle
// session's goroutines wait under stay small: the GC gives a goroutine's
// stack back only when little of it is in use.
//
//go:noinline
func (s *session) pipes() (up, down *wspipe.Pipe) {
	maxMsg := s.tools.cfg.MaxMessageBytes
	var upText wspipe.TextFilter
	switch {
	case s.tools.policy != nil:
		upText = s.policyFilter
	case s.usageTag != "" && s.service == "agent":
		// The Settings alone is read, to be tagged.
		upText = s.tagFirstSettings
	}
	upOpt := wspipe.Options{MaxMessage: maxMsg, Text: upText, Budget: s.budget(wspipe.Client)}
	downOpt := wspipe.Options{MaxMessage: maxMsg, Text: s.upstreamText, Budget: s.budget(wspipe.Upstream), Scrub: s.tools.scrub.Short}
	if s.cont != nil {
		// Every client text message is read, for the record a move
		// carries (continuation.go).
		upOpt.Text, upOpt.Handover = s.clientText, s.cont.handover
		downOpt.Move = s.moveUpstream
	}
	if s.logsConversation() {
		upOpt.Text = s.loggedClientText(upOpt.Text)
	}
	up = wspipe.New(s, s.client, s.upstream, &s.up, upOpt)
	// Deepgram's words are scrubbed of the key and the policy's secrets
	// before a client reads them: text, control payloads, close reasons.
	// Binary messages are audio, relayed as they came.
	down = wspipe.New(s, s.upstream, s.client, &s.down, downOpt)
	return up, down
}
