package main

import (
	"context"
	"dgrelay/internal/fakedeepgram"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// TestEndingsInREADME: every close the relay decides is in docs/answers.md's
// answers table, with its code and reason for each side, and its Error code
// in the same row as the client's close, as the config and metrics tables
// are held to the code.
func TestEndingsInREADME(t *testing.T) {
	table := docSection(t, "docs/answers.md", "Answers: HTTP statuses and close codes")
	for _, e := range endingRows() {
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

// TestHTTPRefusalsInDocs: every answer before the upgrade is in
// docs/answers.md's table: a row naming it gives its status and, when it
// carries one, Retry-After.
func TestHTTPRefusalsInDocs(t *testing.T) {
	table := docSection(t, "docs/answers.md", "Answers: HTTP statuses and close codes")
	for _, h := range httpRefusals {
		status := regexp.MustCompile(`\b` + strconv.Itoa(h.status) + `\b`)
		if !slices.ContainsFunc(strings.Split(table, "\n"), func(row string) bool {
			return strings.Contains(row, h.when) && strings.Contains(row, "HTTP") && status.MatchString(row) &&
				(!h.retryAfter || strings.Contains(row, "Retry-After"))
		}) {
			t.Errorf("no row of the answers table names %q with HTTP %d (Retry-After: %v)", h.when, h.status, h.retryAfter)
		}
	}
}

// TestRepeatsFromTheTable: every in-band refusal that the relay answers
// again before the upgrade has a row there, and refusals.go's status for it
// is the row's.
func TestRepeatsFromTheTable(t *testing.T) {
	for _, e := range endingRows() {
		if e.client.errorCode == "" || e.closedBy != "relay" || e.upstream.code != 0 {
			continue // not a refusal: the session ran
		}
		h, ok := repeatedAs(e)
		if !ok {
			t.Errorf("%s (close %d): no row answers its repeats", e.cause, e.client.code)
			continue
		}
		if got := httpStatusOf(e); got != h.status {
			t.Errorf("%s (close %d): a repeat is answered %d, the table says %d", e.cause, e.client.code, got, h.status)
		}
	}
}

// TestHTTPRefusalsAnswered: the relay answers each row's request with the
// row's status, and Retry-After where the row has it.
func TestHTTPRefusalsAnswered(t *testing.T) {
	upgrade := func(extra ...string) http.Header {
		h := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
			"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
		for i := 0; i+1 < len(extra); i += 2 {
			h.Set(extra[i], extra[i+1])
		}
		return h
	}
	// dialTwice dials twice with query and returns the second handshake's
	// answer: the first was told in band.
	dialTwice := func(t *testing.T, h *harness, query string) *http.Response {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var resp *http.Response
		for range 2 {
			c, r, err := websocket.Dial(ctx, h.wsURL+"?"+query, nil)
			if err == nil {
				t.Cleanup(func() { c.CloseNow() })
			}
			resp = r
		}
		if resp == nil {
			t.Fatal("the second dial got no HTTP answer")
		}
		return resp
	}
	for _, tc := range []struct {
		row    httpRefusal
		env    map[string]string
		answer func(t *testing.T, h *harness) *http.Response
	}{
		{httpBadRoute, nil, func(t *testing.T, h *harness) *http.Response {
			return get(t, h.srv.URL+"/ws/deepgram-proxy/?service=speak", upgrade())
		}},
		{httpBadHandshake, nil, func(t *testing.T, h *harness) *http.Response {
			return get(t, h.srv.URL+"/ws/deepgram-proxy/", upgrade("Sec-Websocket-Version", "8"))
		}},
		{httpNotWebSocket, nil, func(t *testing.T, h *harness) *http.Response {
			return get(t, h.srv.URL+"/ws/deepgram-proxy/", nil)
		}},
		{httpOrigin, nil, func(t *testing.T, h *harness) *http.Response {
			return get(t, h.srv.URL+"/ws/deepgram-proxy/", upgrade("Origin", "https://evil.example"))
		}},
		{httpNoBearer, nil, func(t *testing.T, h *harness) *http.Response {
			return get(t, h.srv.URL+"/ws/deepgram-proxy/", upgrade("Sec-Websocket-Protocol", "chat"))
		}},
		{httpHeadersTooBig, nil, func(t *testing.T, h *harness) *http.Response {
			return get(t, h.srv.URL+"/ws/deepgram-proxy/", upgrade("X-Padding", strings.Repeat("p", 24<<10)))
		}},
		{httpDraining, nil, func(t *testing.T, h *harness) *http.Response {
			h.relay.drain(0)
			return get(t, h.srv.URL+"/ws/deepgram-proxy/", upgrade())
		}},
		{httpRepeatToken, authEnv(nil), func(t *testing.T, h *harness) *http.Response {
			return dialTwice(t, h, "token=not.a.jwt")
		}},
		{httpRepeatLimit, authEnv(map[string]string{"MAX_SESSIONS_PER_USER": "1"}), func(t *testing.T, h *harness) *http.Response {
			token := userToken(t, "u")
			h.dial("token=" + token)
			return dialTwice(t, h, "token="+token)
		}},
		{httpRepeatBusy, map[string]string{"MAX_SESSIONS": "1"}, func(t *testing.T, h *harness) *http.Response {
			h.dial("")
			return dialTwice(t, h, "service=agent")
		}},
	} {
		t.Run(strconv.Itoa(tc.row.status)+" "+tc.row.when, func(t *testing.T) {
			h := newHarness(t, tc.env, fakedeepgram.Options{})
			resp := tc.answer(t, h)
			if resp.StatusCode != tc.row.status {
				t.Errorf("status %d, the table says %d", resp.StatusCode, tc.row.status)
			}
			if got := resp.Header.Get("Retry-After") != ""; got != tc.row.retryAfter {
				t.Errorf("Retry-After %q, the table says one: %v", resp.Header.Get("Retry-After"), tc.row.retryAfter)
			}
		})
	}
	if t.Failed() {
		return
	}
	tested := 10
	if len(httpRefusals) != tested {
		t.Errorf("%d rows of answers before the upgrade, %d of them tested here: add the new one", len(httpRefusals), tested)
	}
}

// TestMetricHelpFromTheTable: the metrics' help and docs/operations.md's
// metrics table list the causes the endings table gives, and only those.
func TestMetricHelpFromTheTable(t *testing.T) {
	section := docSection(t, "docs/operations.md", "Metrics")
	for metric, causes := range map[string][]string{
		"dgrelay_sessions_total":          sessionOutcomes(),
		"dgrelay_refusals_total":          refusalLabels(),
		"dgrelay_refusals_repeated_total": repeatLabels()[1:],
	} {
		row := grepLines(section, "`"+metric+"`")
		if row == "" {
			t.Errorf("docs/operations.md has no row for %s", metric)
			continue
		}
		listed := regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(row, -1)
		for _, cause := range causes {
			if !strings.Contains(row, "`"+cause+"`") {
				t.Errorf("%s: docs/operations.md does not list %s", metric, cause)
			}
		}
		if metric == "dgrelay_sessions_total" {
			for _, m := range listed {
				if m[1] != "service" && m[1] != "outcome" && !strings.HasPrefix(m[1], "dgrelay_") && !slices.Contains(causes, m[1]) {
					t.Errorf("%s: docs/operations.md lists %s, which no row of the endings table has", metric, m[1])
				}
			}
		}
	}
	descs := make(chan *prometheus.Desc)
	go func() {
		newMetrics("dev").registry.Describe(descs)
		close(descs)
	}()
	for d := range descs {
		if desc := d.String(); strings.Contains(desc, `"dgrelay_sessions_total"`) {
			if want := strings.Join(sessionOutcomes(), ", "); !strings.Contains(desc, want) {
				t.Errorf("dgrelay_sessions_total's help %s lacks the table's causes %s", desc, want)
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
		{refuseCapacity, map[string]string{"MAX_TOTAL_SESSIONS": "1"}, func(t *testing.T, h *harness) *websocket.Conn {
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
