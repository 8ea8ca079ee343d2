package main

import (
	"unicode/utf8"

	"dgrelay/internal/wspipe"
)

// policyFilter applies the Settings policy to a client text message and logs
// what it stripped: paths only, never values.
func (s *session) policyFilter(msg []byte) wspipe.Verdict {
	v := s.relay.policy.check(msg)
	if len(v.stripped) > 0 {
		s.relay.metrics.policyViolations.WithLabelValues("strip").Add(float64(len(v.stripped)))
		s.log().Info("settings policy: stripped", "session", s.id, "user", s.user,
			"paths", loggedPaths(v.stripped), "paths_total", len(v.stripped))
	}
	return wspipe.Verdict{Out: v.out, Drop: v.drop, Refused: v.refused}
}

// maxLoggedPaths and maxLoggedPathBytes bound what a log line holds of the
// paths a client chose: the metric counts them all, but a Settings with
// thousands of long keys must not become a log line as large (a 1 MB
// Settings made one of 0.9 MB, at the operator's expense).
const (
	maxLoggedPaths     = 20
	maxLoggedPathBytes = 128
)

// loggedPaths is the first maxLoggedPaths of paths, each cut to
// maxLoggedPathBytes at a character boundary and marked "…" where cut.
func loggedPaths(paths []string) []string {
	out := make([]string, 0, min(len(paths), maxLoggedPaths))
	for _, p := range paths[:min(len(paths), maxLoggedPaths)] {
		out = append(out, loggedPath(p))
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
