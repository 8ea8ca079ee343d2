package main

import (
	"cmp"
	"container/list"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Refusals that clients back off from. A refusal told in band (upgrade, Error
// frame, close) lets the app say why, but it also opens a socket, and
// Deepgram's browser agent SDK resets its attempt counter on every socket
// that opens: refused after the upgrade, it retries at once, forever (one
// tab: 779 sockets in 20 s). Refused before the upgrade, it backs off (0.5,
// 1, 2, 4.6, 8.9 s). So the first refusal of a kind for an identity is told
// in band, and its repeats within REFUSAL_WINDOW get the HTTP status with
// Retry-After: no upgrade, no dial, no log line each, a summary a minute.

// The window (REFUSAL_WINDOW, 30 s) slides: a client retrying forever is
// never told in band again, one that comes back after a pause is.
const (
	// refusalEntries bounds the memory of refusals: about 300 B each, so
	// 3 MB at most, however many distinct tokens a client makes up; the
	// least recently refused goes first.
	refusalEntries = 10_000
	// beforeLoggedEntries bounds the memory of logged answers before the
	// upgrade (relay.beforeLogged): 300 kB at most.
	beforeLoggedEntries = 1_000
	// refusalSummaryEvery is how often repeated refusals are logged.
	refusalSummaryEvery = time.Minute
	// refusalSummaryLines bounds a summary: the most repeated, then one
	// line with the rest counted.
	refusalSummaryLines = 20
	// refusalRetryAfter is the Retry-After of a repeated refusal whose
	// end the relay cannot tell (a token, a user's sessions, its rate).
	refusalRetryAfter = 10 * time.Second
)

// refusal is why a request is answered without a session, as one value that
// relay.refuse answers: before the upgrade by an HTTP row of its own
// (before), or in band by an ending's row (end) the first time and by that
// row's HTTP status when who meets it again within REFUSAL_WINDOW. label
// names it in the refusal memory, the metrics and the logs: the row's, or a
// token's failure under token_.
type refusal struct {
	before *httpRefusal // the answer before the upgrade; nil for an in-band refusal
	detail string       // the body of an answer before the upgrade
	end    ending       // the in-band answer
	label  string
	token  *authFailure // the token's failure, counted by its kind; nil for any other refusal
	// address and credential are a token refusal's: the client's address
	// identity and the credential's hash, which credentialFloods counts.
	address, credential string
	// who is what the refusal memory remembers (an identity, an address,
	// or an address and a credential's hash); retryAfter the wait a repeat
	// is told.
	who        string
	retryAfter time.Duration
	// logged are the log line's own fields (the origin and its fix).
	logged []any
}

// refusedBefore is the answer h before the upgrade, with detail as its body.
func refusedBefore(h httpRefusal, detail string) *refusal {
	return &refusal{before: &h, detail: detail, label: h.label}
}

// refusedBy is the in-band refusal by row e, under its cause, of who, whose
// repeats are told to retry after retryAfter.
func refusedBy(e ending, who string, retryAfter time.Duration) *refusal {
	return &refusal{end: e, label: e.cause, who: who, retryAfter: retryAfter}
}

// tokenRefused is the refusal of a token that failed as f says: f's row,
// under token_ and its kind, of the credential hashed as credential from
// address (an identity: another user at the address is not affected).
func tokenRefused(f *authFailure, address, credential string) *refusal {
	return &refusal{end: f.end, label: "token_" + f.label, token: f, who: address + " token:" + credential,
		address: address, credential: credential, retryAfter: refusalRetryAfter}
}

// credentialsPerAddress bounds the distinct failing credentials one address
// is told of in band within REFUSAL_WINDOW. Past it, each new one is
// answered as a repeat (401 with Retry-After: no upgrade, no log line, no
// entry in the refusal memory), so that a client making up tokens for ever
// costs what a client repeating one does, and cannot push others' refusals
// out of the memory. An app's page has one credential at a time; a few
// stale ones in a window are told in band.
const credentialsPerAddress = 5

// credentialFloods remembers, per address, the distinct failing credentials
// told in band within the window: refusalEntries addresses at most, the
// oldest forgotten first.
type credentialFloods struct {
	mu      sync.Mutex
	window  time.Duration
	entries map[string]*credentialsSeen
	order   *list.List // of addresses, front: most recently refused
}

// credentialsSeen are one address's credentials told in band, and when the
// last refusal from it came.
type credentialsSeen struct {
	hashes  []string
	last    time.Time
	element *list.Element
	flooded bool // past the bound in this window: logged once
}

// newCredentialFloods counts within window (REFUSAL_WINDOW; 0: no bound).
func newCredentialFloods(window time.Duration) *credentialFloods {
	return &credentialFloods{window: window, entries: make(map[string]*credentialsSeen), order: list.New()}
}

// overflows records credential refused for address at now and reports
// whether it is a new one past credentialsPerAddress within the window
// (the window slides with every refusal from the address); first is true
// the first time in a window that it is.
func (c *credentialFloods) overflows(address, credential string, now time.Time) (over, first bool) {
	if c.window <= 0 {
		return false, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[address]
	switch {
	case e == nil:
		for c.order.Len() >= refusalEntries {
			oldest := c.order.Back()
			delete(c.entries, oldest.Value.(string))
			c.order.Remove(oldest)
		}
		e = &credentialsSeen{element: c.order.PushFront(address)}
		c.entries[address] = e
	case now.Sub(e.last) >= c.window:
		e.hashes, e.flooded = e.hashes[:0], false
		c.order.MoveToFront(e.element)
	default:
		c.order.MoveToFront(e.element)
	}
	e.last = now
	if slices.Contains(e.hashes, credential) {
		return false, false
	}
	if len(e.hashes) < credentialsPerAddress {
		e.hashes = append(e.hashes, credential)
		return false, false
	}
	first = !e.flooded
	e.flooded = true
	return true, first
}

// refusalMemory remembers recent refusals by who was refused and why. It is
// touched once per refused request, never per frame or session.
type refusalMemory struct {
	mu      sync.Mutex
	entries map[string]*list.Element // refusalEntry by key
	order   *list.List               // front: most recently refused
	max     int
	window  time.Duration
	// evicted counts entries pushed out by newer ones since the last
	// summary: a sign that someone makes up credentials.
	evicted int
}

// refusalEntry is one remembered refusal.
type refusalEntry struct {
	key     string
	who     string // the identity, or the address and the credential's hash
	reason  string // the refusal's label: token_expired, user_sessions, ...
	last    time.Time
	repeats int // answered before the upgrade since the last summary
}

// newRefusalMemory holds at most max refusals, each for window after its
// last repeat.
func newRefusalMemory(max int, window time.Duration) *refusalMemory {
	return &refusalMemory{entries: make(map[string]*list.Element), order: list.New(), max: max, window: window}
}

// repeat records a refusal of reason for who at now and reports whether it
// repeats one within the window (to be answered before the upgrade).
func (m *refusalMemory) repeat(who, reason string, now time.Time) bool {
	if m.window <= 0 {
		return false // REFUSAL_WINDOW=0: every refusal in band
	}
	key := reason + "\x00" + who
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[key]; ok {
		e := el.Value.(*refusalEntry)
		repeated := now.Sub(e.last) < m.window
		e.last = now
		if repeated {
			e.repeats++
		}
		m.order.MoveToFront(el)
		return repeated
	}
	for m.order.Len() >= m.max {
		oldest := m.order.Back()
		delete(m.entries, oldest.Value.(*refusalEntry).key)
		m.order.Remove(oldest)
		m.evicted++
	}
	m.entries[key] = m.order.PushFront(&refusalEntry{key: key, who: who, reason: reason, last: now})
	return false
}

// len is how many refusals are remembered.
func (m *refusalMemory) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.order.Len()
}

// take returns the entries repeated since the last call (copies, most
// repeated first) and the evictions, resets their counts and forgets
// entries whose window has passed.
func (m *refusalMemory) take(now time.Time) (repeated []refusalEntry, evicted int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for el := m.order.Back(); el != nil; {
		e, prev := el.Value.(*refusalEntry), el.Prev()
		if e.repeats > 0 {
			repeated = append(repeated, *e)
			e.repeats = 0
		}
		if now.Sub(e.last) >= m.window {
			delete(m.entries, e.key)
			m.order.Remove(el)
		}
		el = prev
	}
	evicted, m.evicted = m.evicted, 0
	slices.SortStableFunc(repeated, func(a, b refusalEntry) int { return cmp.Compare(b.repeats, a.repeats) })
	return repeated, evicted
}

// httpStatusOf is the HTTP status that says before the upgrade what e's
// close code says after it.
func httpStatusOf(e ending) int {
	if h, ok := repeatedAs(e); ok {
		return h.status
	}
	return http.StatusServiceUnavailable // try again later
}

// untilUTCMidnight is how long a daily quota stays spent.
func untilUTCMidnight(now time.Time) time.Duration {
	now = now.UTC()
	y, mo, d := now.Date()
	return time.Date(y, mo, d+1, 0, 0, 0, 0, time.UTC).Sub(now)
}

// retryAfterFor is the Retry-After of a repeated refusal by a limit: the
// daily quota's until midnight UTC, the others' refusalRetryAfter.
func retryAfterFor(e ending, now time.Time) time.Duration {
	if e.cause == refuseQuota.cause {
		return untilUTCMidnight(now)
	}
	return refusalRetryAfter
}
