package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// At start the relay asks Deepgram once whether its key is accepted, so
// that a wrong or revoked key is found in the start log rather than by the
// first user's call. The call is GET /v1/projects ("List Projects":
// deepgram-api-specs openapi.yml and the docs' reference/manage/projects/list
// give it a required "Authorization: Token <API_KEY>"): the cheapest call the
// API has that needs a key, reads a few bytes and changes nothing.
//
// It runs in the background, bounded by keyCheckTimeout: the listener is
// already open and the start line logged, so neither a slow Deepgram nor a
// network without a route to it delays the start (Cloud Run's startup probe,
// a local run), and the answer follows the start line a moment later. A
// rejected key is logged at ERROR but does not stop the relay: the operator
// may be rotating it, and the new key may be in place before the first call.

// keyCheckTimeout bounds the check: a healthy Deepgram answers in well under
// a second, and a check still waiting after this says nothing more useful.
const keyCheckTimeout = 3 * time.Second

// keyCheckPath is Deepgram's List Projects.
const keyCheckPath = "/v1/projects"

// keyCheckURL is the REST address of the agent upstream agentURL: http(s)
// for ws(s), the same host and port, the path keyCheckPath. Deepgram's own
// agent host serves the agent API alone (its SDK's environments: REST
// "base" api.deepgram.com, agent wss://agent.deepgram.com), so it maps to
// api.deepgram.com; other hosts (api.eu.deepgram.com, a self-hosted
// Deepgram, the tests' fake) are asked themselves.
func keyCheckURL(agentURL string) (string, error) {
	u, err := url.Parse(agentURL)
	if err != nil {
		return "", errors.New("DEEPGRAM_AGENT_URL is not a URL")
	}
	rest := url.URL{Scheme: "https", Host: u.Host, Path: keyCheckPath}
	if u.Scheme == "ws" {
		rest.Scheme = "http"
	}
	if u.Hostname() == "agent.deepgram.com" {
		rest.Host = "api.deepgram.com"
		if p := u.Port(); p != "" {
			rest.Host += ":" + p
		}
	}
	return rest.String(), nil
}

// keyVerdict is what the check learnt: accepted, rejected or unchecked,
// and why.
type keyVerdict struct {
	result, why string
}

// checkKey asks target with key and judges the answer. 200 accepts the key;
// 403 does too (Deepgram's INSUFFICIENT_PERMISSIONS: a key it knows, whose
// scopes do not include listing projects, which the agent does not need);
// 401 rejects it (INVALID_AUTH, docs errors page). Anything else, and no
// answer, leaves it unchecked: an outage or a host without this endpoint
// says nothing of the key.
func checkKey(ctx context.Context, client *http.Client, target, key string) keyVerdict {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return keyVerdict{"unchecked", "the request could not be made"}
	}
	req.Header.Set("Authorization", "Token "+key)
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return keyVerdict{"unchecked", fmt.Sprintf("no answer from %s within %s", req.URL.Host, keyCheckTimeout)}
		}
		if ctx.Err() != nil {
			return keyVerdict{} // the relay stopped first: nothing to say
		}
		// url.Error quotes the URL, which holds no secret; its inner error
		// says what failed (DNS, refused, TLS).
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return keyVerdict{"unchecked", fmt.Sprintf("%s: %v", req.URL.Host, err)}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch resp.StatusCode {
	case http.StatusOK:
		return keyVerdict{"accepted", ""}
	case http.StatusForbidden:
		return keyVerdict{"accepted", "HTTP 403: a key Deepgram knows, without the scope to list projects"}
	case http.StatusUnauthorized:
		return keyVerdict{"rejected", fmt.Sprintf("HTTP 401 from %s", req.URL.Host)}
	}
	return keyVerdict{"unchecked", fmt.Sprintf("HTTP %d from %s", resp.StatusCode, req.URL.Host)}
}

// logKeyVerdict writes the check's one line: "deepgram key: accepted",
// "deepgram key: rejected (...)" at ERROR, or "deepgram key: unchecked
// (why)" at WARN. The key is never in it.
func logKeyVerdict(log *slog.Logger, v keyVerdict) {
	if v.result == "" {
		return
	}
	msg := "deepgram key: " + v.result
	if v.why != "" {
		msg += " (" + v.why + ")"
	}
	switch v.result {
	case "accepted":
		log.Info(msg, "key_check", v.result)
	case "rejected":
		log.Error(msg+": every call will fail until DEEPGRAM_API_KEY (or its secret) holds a valid key; "+
			"the relay runs on, as the key may be being rotated", "key_check", v.result)
	default:
		log.Warn(msg, "key_check", v.result)
	}
}

// startKeyCheck checks key against the agent upstream's host in the
// background. The returned stop cancels a check still running and waits for
// it, so that none outlives run.
func startKeyCheck(log *slog.Logger, agentURL, key string) (stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), keyCheckTimeout)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		target, err := keyCheckURL(agentURL)
		if err != nil {
			logKeyVerdict(log, keyVerdict{"unchecked", err.Error()})
			return
		}
		// Proxy from the environment, as the Deepgram dial honours
		// HTTPS_PROXY; no redirect is followed, since the key rides in
		// the header.
		client := &http.Client{
			Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
		defer client.CloseIdleConnections()
		logKeyVerdict(log, checkKey(ctx, client, target, key))
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}
