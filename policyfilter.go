package main

import (
	"time"
	"unicode/utf8"

	"dgrelay/internal/message"
	"dgrelay/internal/wspipe"
)

// policyFilter applies the Settings policy to a client text message and logs
// what it stripped: paths only, never values.
// Only the client's pipe calls it, so its count needs no lock.
func (s *session) policyFilter(msg []byte) wspipe.Verdict {
	if !s.textRate.AllowN(time.Now(), len(msg)) {
		// Parsing is the one per-message cost a client can make large
		// (a megabyte of small values costs some 35 times a megabyte of
		// audio): past its rate the session ends.
		s.end(endTextRate.outcome(""))
		return wspipe.Verdict{Drop: true}
	}
	v := s.relay.policy.Check(msg, s.service)
	if len(v.Stripped) > 0 {
		s.relay.metrics.policyViolations.WithLabelValues("strip").Add(float64(len(v.Stripped)))
		switch s.strippedLines++; {
		case s.strippedLines <= maxStrippedLines:
			s.log().Info("settings policy: stripped", "session", s.id, "user", s.user,
				"paths", loggedPaths(v.Stripped, s.relay.redact), "paths_total", len(v.Stripped))
		case s.strippedLines == maxStrippedLines+1:
			s.log().Info("settings policy: stripped, and more this session; the metric counts them",
				"session", s.id, "user", s.user)
		}
	}
	if s.usageTag != "" && v.Settings != nil && !v.Drop && v.Refused == "" {
		// After the policy: its set may pin tags, the relay's goes too.
		addUsageTag(v.Settings, s.usageTag)
		if out, err := message.Encode(v.Settings); err == nil {
			v.Out = out
		}
	}
	return wspipe.Verdict{Out: v.Out, Drop: v.Drop, Refused: v.Refused}
}

// clientTextRate is the rate at which a user's text messages, all its
// sessions together, may come under a policy, in bytes a second, after a
// burst of one whole message: Settings, KeepAlive every 5 s and the odd
// injected message or function result are far below it.
const clientTextRate = 64 << 10

// maxStrippedLines bounds the "stripped" lines one session writes: each is
// bounded, but a client can send a hundred thousand small messages.
const maxStrippedLines = 10

// maxLoggedPaths and maxLoggedPathBytes bound what a log line holds of the
// paths a client chose: the metric counts them all, but a Settings with
// thousands of long keys must not become a log line as large (a 1 MB
// Settings made one of 0.9 MB, at the operator's expense).
const (
	maxLoggedPaths     = 20
	maxLoggedPathBytes = 128
)

// loggedPaths is the first maxLoggedPaths of paths, each cut to
// maxLoggedPathBytes at a character boundary and marked "…" where cut. The
// keys are the client's: redact takes out any secret one spells.
func loggedPaths(paths []string, redact func(string) string) []string {
	out := make([]string, 0, min(len(paths), maxLoggedPaths))
	for _, p := range paths[:min(len(paths), maxLoggedPaths)] {
		out = append(out, loggedPath(redact(p)))
	}
	return out
}

func loggedPath(p string) string {
	if len(p) <= maxLoggedPathBytes {
		return p
	}
	n := maxLoggedPathBytes
	for n > 0 && !utf8.RuneStart(p[n]) {
		n--
	}
	return p[:n] + "…"
}

// settingsRefused ends a session whose message the policy refused: the client
// is told in band why, then closed 1008; Deepgram received nothing of that
// message and gets a normal close.
func (s *session) settingsRefused(why string) {
	s.relay.metrics.policyViolations.WithLabelValues("refuse").Inc()
	// why names the client's own keys: bounded and cleaned for the log
	// and the Error frame alike.
	why = s.relay.redact(why)
	s.log().Info("settings policy: refused", "session", s.id, "user", s.user, "why", why)
	s.end(endSettingsRefused.outcome(why))
}
