package main

// redact makes a message that may quote Deepgram, a client or an error fit
// for a log line or an Error frame: bounded, and free of the key and the
// policy's secrets.
func (rl *relay) redact(msg string) string { return rl.scrub.Clean(msg) }

// errorDetailLimit bounds an error in a log line. Wider than an Error
// frame's 200 bytes: a Go error about a failed dial names the URL, the
// address and the cause last ("x509: certificate signed by unknown
// authority"), and it is the cause that the operator needs.
const errorDetailLimit = 1024

// redactError is redact for an error in a log line: the URL's query out
// (it may hold a client's listen options), at most errorDetailLimit bytes.
func (rl *relay) redactError(err error) string {
	return rl.scrub.CleanTo(urlQuery.ReplaceAllString(err.Error(), "?…"), errorDetailLimit)
}
