package main

import (
	"bytes"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
	"dgrelay/internal/wspipe"

	"github.com/coder/websocket"
)

// holders is how many identities fill the clients' pool in
// TestTextReserveKeepsOrdinaryMessages, each with a message held unfinished.
const holders = 200

// TestTextReserveKeepsOrdinaryMessages (issue 22): hundreds of identities,
// each holding a message past its reserve unfinished, fill the clients'
// pool; an ordinary Settings of another user still passes (its reserve is
// its own), a large message waits for room and goes on once some comes
// back, and one that finds none within its wait ends busy. Before the
// reserve, about 50 accounts made every other user's 300-byte Settings end
// RELAY_BUSY.
func TestTextReserveKeepsOrdinaryMessages(t *testing.T) {
	h := newHarness(t, authEnv(map[string]string{"SETTINGS_POLICY": echoPolicy}), fakedeepgram.Options{})
	const beyond = 1000 // what each holder holds of the pool
	h.relay.texts.client.limit = holders * beyond
	h.relay.texts.waitFor.Store(int64(2 * time.Second))
	reserve := int(h.relay.texts.reserve)
	held := make([]*rawClient, holders)
	for i := range held {
		held[i] = h.rawDial("token=" + userToken(t, "holder-"+strconv.Itoa(i)))
		held[i].send(clientFrame(0x01, bytes.Repeat([]byte("a"), reserve+beyond))) // text, FIN=0
	}
	waitFor(t, func() bool { return h.relay.texts.client.used.Load() == holders*beyond })
	if got, want := h.relay.texts.reserved.Load(), int64(holders*reserve); got < want {
		t.Fatalf("reserves hold %d, want at least %d", got, want)
	}

	// An ordinary Settings, within its own reserve.
	c := h.rawDial("token=" + userToken(t, "ordinary"))
	c.send(clientFrame(0x81, []byte(minimalSettings)))
	if op, p := c.read(); op != wspipe.OpText || !strings.Contains(string(p), "SettingsApplied") {
		t.Fatalf("the ordinary Settings got %x %q", op, p)
	}

	// A large message waits; five holders finishing make room for it.
	big := []byte(`{"content":"` + strings.Repeat("b", reserve+4*beyond) + `","type":"Fake.Echo"}`)
	large := h.rawDial("token=" + userToken(t, "large"))
	large.send(clientFrame(0x81, big))
	time.Sleep(100 * time.Millisecond)
	for _, hc := range held[:5] {
		hc.send(clientFrame(0x80, nil)) // the end: the held text goes on
	}
	if op, p := large.read(); op != wspipe.OpText || len(p) != len(big) {
		t.Fatalf("the large message got %x, %d bytes", op, len(p))
	}

	// With no room coming back, a large message ends busy after its wait.
	h.relay.texts.waitFor.Store(int64(200 * time.Millisecond))
	for _, hc := range held[5:10] {
		hc.send(clientFrame(0x00, bytes.Repeat([]byte("a"), beyond))) // the pool full again
	}
	waitFor(t, func() bool { return h.relay.texts.client.used.Load() == holders*beyond })
	late := h.rawDial("token=" + userToken(t, "late"))
	late.send(clientFrame(0x81, big))
	late.expectRelayError("RELAY_BUSY")
	late.expectClose(websocket.StatusTryAgainLater)
}

// TestTextReserveDeepgram: likewise on Deepgram's side: with Deepgram's
// pool full, a session still reads Deepgram's ordinary events whole (its
// Welcome, a 2 KB message), which fit its reserve.
func TestTextReserveDeepgram(t *testing.T) {
	h := newHarness(t, nil, fakedeepgram.Options{})
	h.relay.texts.upstream.limit = 1000
	h.relay.texts.waitFor.Store(int64(100 * time.Millisecond))
	reserve := int(h.relay.texts.reserve)
	holder := h.rawDial("")
	unfinished := append([]byte{0x01, 127, 0, 0, 0, 0, 0, 0, 0, 0}, bytes.Repeat([]byte("a"), reserve+1000)...)
	n := reserve + 1000
	for i := range 8 {
		unfinished[9-i] = byte(n >> (8 * i))
	}
	holder.send(clientFrame(0x81, []byte(`{"type":"Fake.Raw","hex":"`+hex.EncodeToString(unfinished)+`"}`)))
	waitFor(t, func() bool { return h.relay.texts.upstream.used.Load() == 1000 })

	c := h.rawDial("") // its Welcome is read whole (the scrub), from its reserve
	c.send(clientFrame(0x81, []byte(`{"type":"Fake.Send","bytes":2000}`)))
	if op, p := c.read(); op != wspipe.OpText || len(p) != 2000 {
		t.Fatalf("Deepgram's 2,000-byte message got %x, %d bytes", op, len(p))
	}
}
