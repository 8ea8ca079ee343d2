package main

import (
	"context"
	"dgrelay/internal/fakedeepgram"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestEndingsInREADME: every close the relay decides is in the README's
// answers table, with its code and reason for each side, and its Error code
// in the same row as the client's close, as the config and metrics tables
// are held to the code.
func TestEndingsInREADME(t *testing.T) {
	table := docSection(t, "docs/answers.md", "Answers: HTTP statuses and close codes")
	for _, e := range endings {
		for side, a := range map[string]answer{"client": e.client, "upstream": e.upstream} {
			if a.code == 0 {
				continue
			}
			if want := fmt.Sprintf("%d `%s`", a.code, a.reason); !strings.Contains(table, want) {
				t.Errorf("%s (%s): the answers table lacks %s", e.cause, side, want)
			}
			if a.errorCode != "" && !slices.ContainsFunc(strings.Split(table, "\n"), func(row string) bool {
				return strings.Contains(row, fmt.Sprintf("%d `%s`", a.code, a.reason)) && strings.Contains(row, "`"+a.errorCode+"`")
			}) {
				t.Errorf("%s: no row of the answers table gives %d `%s` with the Error code %s", e.cause, a.code, a.reason, a.errorCode)
			}
		}
	}
}

// expectErrorThenClose reads c until the relay's Error frame and checks that
// it carries e's Error code and the close's reason, and that the close comes
// next, with e's code and reason: nothing between them.
func expectErrorThenClose(t *testing.T, c *websocket.Conn, e ending) {
	t.Helper()
	for {
		typ, data, err := readErr(c)
		if err != nil {
			t.Fatalf("%s: closed before its Error frame: %v", e.cause, err)
		}
		var m map[string]any
		if typ != websocket.MessageText || json.Unmarshal(data, &m) != nil || m["type"] != "Error" {
			continue // Welcome, echoes
		}
		if m["code"] != e.client.errorCode || m["description"] != e.client.reason {
			t.Fatalf("%s: Error frame %s, want code %s with %q", e.cause, data, e.client.errorCode, e.client.reason)
		}
		break
	}
	_, data, err := readErr(c)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != e.client.code || ce.Reason != e.client.reason {
		t.Fatalf("%s: after the Error frame %q %v, want close %d %q", e.cause, data, err, e.client.code, e.client.reason)
	}
}

// TestErrorBeforeEveryClose: each close the relay decides after the upgrade
// reaches the client as an Error frame with its code first (what the React
// component hands the app), then the close, over real sockets.
func TestErrorBeforeEveryClose(t *testing.T) {
	dialOK := func(t *testing.T, h *harness, query string) *websocket.Conn {
		c, err := h.tryDial(query, nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	for _, tc := range []struct {
		end     ending
		env     map[string]string
		trigger func(t *testing.T, h *harness) *websocket.Conn
	}{
		{refuseTokenMissing, authEnv(nil), func(t *testing.T, h *harness) *websocket.Conn { return dialOK(t, h, "") }},
		{refuseTokenExpired, authEnv(nil), func(t *testing.T, h *harness) *websocket.Conn {
			return dialOK(t, h, "token="+hs256(t, testJWTSecret, claims{sub: "u", exp: -time.Hour}))
		}},
		{refuseTokenInvalid, authEnv(nil), func(t *testing.T, h *harness) *websocket.Conn { return dialOK(t, h, "token=not.a.jwt") }},
		{refuseUserSessions, authEnv(map[string]string{"MAX_SESSIONS_PER_USER": "1"}), func(t *testing.T, h *harness) *websocket.Conn {
			dialOK(t, h, "token="+userToken(t, "u"))
			return dialOK(t, h, "token="+userToken(t, "u"))
		}},
		{refuseUserRate, authEnv(map[string]string{"SESSION_RATE_PER_MINUTE": "1", "MAX_SESSIONS_PER_USER": "0"}), func(t *testing.T, h *harness) *websocket.Conn {
			dialOK(t, h, "token="+userToken(t, "u"))
			return dialOK(t, h, "token="+userToken(t, "u"))
		}},
		{refuseFull, map[string]string{"MAX_SESSIONS": "1"}, func(t *testing.T, h *harness) *websocket.Conn {
			dialOK(t, h, "")
			return dialOK(t, h, "")
		}},
		{endIdle, map[string]string{"IDLE_TIMEOUT": "300ms"}, func(t *testing.T, h *harness) *websocket.Conn { return dialOK(t, h, "") }},
		{endDuration, map[string]string{"MAX_SESSION_DURATION": "300ms"}, func(t *testing.T, h *harness) *websocket.Conn { return dialOK(t, h, "") }},
		{endDrain, nil, func(t *testing.T, h *harness) *websocket.Conn {
			c := dialOK(t, h, "")
			expectType(t, c, "Welcome")
			go h.relay.drain(0)
			return c
		}},
		{endUpstreamVanished, nil, func(t *testing.T, h *harness) *websocket.Conn {
			c := dialOK(t, h, "")
			write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Vanish"}`))
			return c
		}},
		{endSlowUpstream, map[string]string{"WRITE_TIMEOUT": "300ms", "IDLE_TIMEOUT": "0"}, func(t *testing.T, h *harness) *websocket.Conn {
			c := dialOK(t, h, "")
			write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Deaf"}`))
			go func() { // until the buffers between fill and the write stalls
				audio := make([]byte, 64<<10)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				for c.Write(ctx, websocket.MessageBinary, audio) == nil {
				}
			}()
			return c
		}},
		{endUpstreamProtocol, nil, func(t *testing.T, h *harness) *websocket.Conn {
			c := dialOK(t, h, "")
			write(t, c, websocket.MessageText, []byte(`{"type":"Fake.Raw","hex":"828101020304"}`)) // a masked server frame
			return c
		}},
		{endClientTooBig, map[string]string{"MAX_MESSAGE_BYTES": "1000"}, func(t *testing.T, h *harness) *websocket.Conn {
			c := dialOK(t, h, "")
			write(t, c, websocket.MessageBinary, make([]byte, 2000))
			return c
		}},
	} {
		t.Run(tc.end.client.errorCode, func(t *testing.T) {
			h := newHarness(t, tc.env, fakedeepgram.Options{})
			expectErrorThenClose(t, tc.trigger(t, h), tc.end)
		})
	}
}
