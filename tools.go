package main

import (
	"dgrelay/internal/policy"
	"dgrelay/internal/scrub"
	"log/slog"
	"regexp"
)

// tools are what a session uses of the relay, shared by all of them: its
// config, its logger, its metrics, the Settings policy, the scrubber and the
// text budget. The relay embeds them; each session holds a pointer.
type tools struct {
	cfg     *Config
	log     *slog.Logger
	metrics *metrics
	policy  *policy.Policy // nil: Settings pass untouched
	scrub   *scrub.Scrubber
	texts   *textBudget
	// records are the latency metrics, the conversation log and the
	// webhook (records.go).
	records *recordKeeper
}

// logFor is the logger with trace, when there is one.
func (t *tools) logFor(trace string) *slog.Logger {
	if trace == "" {
		return t.log
	}
	return t.log.With(traceKey, trace)
}

// redact makes a message that may quote Deepgram, a client or an error fit
// for a log line or an Error frame: bounded, and free of the key and the
// policy's secrets.
func (t *tools) redact(msg string) string { return t.scrub.Clean(msg) }

// errorDetailLimit bounds an error in a log line. Wider than an Error
// frame's 200 bytes: a Go error about a failed dial names the URL, the
// address and the cause last ("x509: certificate signed by unknown
// authority"), and it is the cause that the operator needs.
const errorDetailLimit = 1024

// redactError is redact for an error in a log line: the URL's query out
// (it may hold a client's listen options), at most errorDetailLimit bytes.
func (t *tools) redactError(err error) string {
	return t.scrub.CleanTo(urlQuery.ReplaceAllString(err.Error(), "?…"), errorDetailLimit)
}

// urlQuery matches the query of a URL quoted in an error: the dial error
// names the target, and a log line carries no query string. The URL is
// quoted with Go's %q, so a " in a client's raw query stands there as \",
// which is the query still: escapes are taken whole.
var urlQuery = regexp.MustCompile(`\?(?:[^"\\\s]|\\.)*`)

// requestIDOK says whether id, one of Deepgram's request ids (Welcome's, the
// dg-request-id header), may go into log lines and records as it is: an id
// of the expected characters and length (validRequestID) that the scrub
// leaves alone. Log attributes are not scrubbed one by one, so an upstream
// that sent the key as its request id would otherwise put it in every
// later line of the session.
func (t *tools) requestIDOK(id string) bool {
	return validRequestID(id) && t.scrub.Clean(id) == id
}
