package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"
)

// keyCheckLine is the start log's "deepgram key: ..." line, parsed, once
// it is there.
func keyCheckLine(t *testing.T, p *process) (severity, message string) {
	t.Helper()
	waitForLog(t, p.logs, `"message":"deepgram key: `)
	for _, line := range strings.Split(p.logs.String(), "\n") {
		var entry struct{ Severity, Message string }
		if json.Unmarshal([]byte(line), &entry) == nil && strings.HasPrefix(entry.Message, "deepgram key: ") {
			return entry.Severity, entry.Message
		}
	}
	t.Fatal("no deepgram key line")
	return "", ""
}

// TestKeyCheckAccepted: the built relay asks the agent upstream's host,
// once, GET /v1/projects with its key as Deepgram takes it, and logs the key
// accepted, without the key.
func TestKeyCheckAccepted(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{APIKey: testAPIKey})
	defer fake.Close()
	p := startProcess(t, fake)
	severity, message := keyCheckLine(t, p)
	if severity != "INFO" || message != "deepgram key: accepted" {
		t.Errorf("%s %q, want INFO \"deepgram key: accepted\"", severity, message)
	}
	calls := fake.RESTRequests()
	if len(calls) != 1 || calls[0].Path != "/v1/projects" || calls[0].Header.Get("Authorization") != "Token "+testAPIKey {
		t.Errorf("the relay's REST calls: %+v; want one GET /v1/projects with the key", calls)
	}
	if strings.Contains(p.logs.String(), testAPIKey) {
		t.Error("the key is in the log")
	}
	p.dial(t) // the relay serves
}

// TestKeyCheckRejected: a key Deepgram refuses (401) is a loud ERROR at
// start, and the relay runs on: the operator may be rotating the key.
func TestKeyCheckRejected(t *testing.T) {
	fake := fakedeepgram.Start(fakedeepgram.Options{APIKey: "the-right-key-which-the-relay-lacks"})
	defer fake.Close()
	p := startProcess(t, fake)
	severity, message := keyCheckLine(t, p)
	if severity != "ERROR" || !strings.HasPrefix(message, "deepgram key: rejected (HTTP 401 from ") || !strings.Contains(message, "runs on") {
		t.Errorf("%s %q, want ERROR \"deepgram key: rejected (HTTP 401 ...)\"", severity, message)
	}
	if resp := get(t, p.base+"/readyz", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("after a rejected key /readyz is %d; the relay should run on", resp.StatusCode)
	}
	if strings.Contains(p.logs.String(), testAPIKey) {
		t.Error("the key is in the log")
	}
}

// TestKeyCheckUnchecked: a host that never answers, one that refuses the
// connection and one without the endpoint leave the key unchecked, with the
// reason, at WARNING; the start line is not held for the check, and the
// check gives up within its 3 s.
func TestKeyCheckUnchecked(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	refused := freePort(t)
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	fake := fakedeepgram.Start(fakedeepgram.Options{})
	defer fake.Close()
	for _, c := range []struct{ name, agentURL, why string }{
		{"silent", "ws://" + silent.Addr().String() + "/v1/agent/converse", "(no answer from " + silent.Addr().String() + " within 3s)"},
		{"refused", "ws://127.0.0.1:" + refused + "/v1/agent/converse", "(127.0.0.1:" + refused + ": dial tcp 127.0.0.1:" + refused + ": connect: connection refused)"},
		{"404", "ws" + strings.TrimPrefix(notFound.URL, "http") + "/v1/agent/converse", "(HTTP 404 from " + strings.TrimPrefix(notFound.URL, "http://") + ")"},
	} {
		started := time.Now()
		p := startProcess(t, fake, "DEEPGRAM_AGENT_URL="+c.agentURL)
		startedIn := time.Since(started)
		severity, message := keyCheckLine(t, p)
		checkedIn := time.Since(started)
		if severity != "WARNING" || message != "deepgram key: unchecked "+c.why {
			t.Errorf("%s: %s %q, want WARNING \"deepgram key: unchecked %s\"", c.name, severity, message, c.why)
		}
		if c.name == "silent" && (startedIn > 2*time.Second || checkedIn > 5*time.Second || checkedIn < 2900*time.Millisecond) {
			t.Errorf("silent host: started in %s, checked in %s; want the start unheld and the check cut at 3 s", startedIn, checkedIn)
		}
		t.Logf("%s: started in %s, key line in %s", c.name, startedIn.Round(time.Millisecond), checkedIn.Round(time.Millisecond))
	}
}

// TestKeyCheckURL: the REST address asked for each agent upstream.
func TestKeyCheckURL(t *testing.T) {
	for agent, want := range map[string]string{
		"wss://agent.deepgram.com/v1/agent/converse":     "https://api.deepgram.com/v1/projects",
		"wss://agent.deepgram.com:443/v1/agent/converse": "https://api.deepgram.com:443/v1/projects",
		"wss://api.eu.deepgram.com/v1/agent/converse":    "https://api.eu.deepgram.com/v1/projects",
		"ws://127.0.0.1:4000/v1/agent/converse":          "http://127.0.0.1:4000/v1/projects",
		"wss://deepgram.internal:8443/agent?x=1":         "https://deepgram.internal:8443/v1/projects",
	} {
		if got, err := keyCheckURL(agent); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", agent, got, err, want)
		}
	}
}
