package main

import (
	"unicode/utf8"
)

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
