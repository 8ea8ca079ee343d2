package main

import (
	"log/slog"
	"sync/atomic"
)

const (
	// maxRequestIDs bounds a session's request ids: a call carried across
	// Deepgram connections has one per connection.
	maxRequestIDs = 32
	// maxRequestIDBytes bounds one; Deepgram's are UUIDs (36 bytes).
	maxRequestIDBytes = 128
	// maxErrorCodes bounds the Error codes a record lists, and
	// maxErrorCodeBytes each (Deepgram's are short upper-case words).
	maxErrorCodes     = 32
	maxErrorCodeBytes = 64
)

// recordNotes are what an agent session notes of its conversation: the
// request ids Deepgram gave it, for its log lines, and with a webhook the
// summary and transcript of its record. Only the pipe from Deepgram writes
// it (heard); ended reads it once both pipes have stopped. logger alone is
// read by both pipes.
type recordNotes struct {
	// logger is the session's logger with the current request_id, from
	// the first Welcome on; nil before.
	logger atomic.Pointer[slog.Logger]
	// requestIDs are Welcome's request_id of each Deepgram connection
	// the session has had, oldest first (at most maxRequestIDs).
	requestIDs []string
	// turns counts the user's statements (ConversationText, role user),
	// functionCalls the calls Deepgram asked for (FunctionCallRequest),
	// errorCodes the codes of Deepgram's Error messages (at most
	// maxErrorCodes): the record's summary, kept with a webhook only.
	turns, functionCalls int
	errorCodes           []string
	transcript           transcript
}

// addErrorCode lists an Error code for the record, bounded.
func (c *recordNotes) addErrorCode(code string) {
	if len(c.errorCodes) < maxErrorCodes && code != "" {
		c.errorCodes = append(c.errorCodes, cutText(code, maxErrorCodeBytes))
	}
}

// validRequestID: what a log line and a record take from Deepgram as a
// request id: 1 to maxRequestIDBytes of letters, digits and - _ . :
func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}
