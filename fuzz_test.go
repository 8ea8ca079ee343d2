package main

import (
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzTokenFrom: whatever the handshake carries, token extraction neither
// panics nor takes a token from anywhere but the bearer pair or ?token=.
func FuzzTokenFrom(f *testing.F) {
	f.Add("bearer, eyJ.a.b", "", "service=agent")
	f.Add("", "", "token=eyJ.a.b&service=agent")
	f.Add("bearer", "", "token=x")
	f.Add("token, raw-key", "", "")
	f.Add("Bearer,,  x ,y", "", "token=%zz")
	f.Add(" , ", "", "token=a&token=b")
	f.Add("", "Bearer eyJ.h.s", "token=q")
	f.Add("", "Token dg-key", "token=q")
	f.Fuzz(func(t *testing.T, protocols, authorization, query string) {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.URL.RawQuery = query
		if protocols != "" {
			r.Header.Set("Sec-WebSocket-Protocol", protocols)
		}
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		tok, err := tokenFrom(r)
		offered := headerTokens(r.Header, "Sec-WebSocket-Protocol")
		if len(offered) > 0 {
			i := slices.IndexFunc(offered, func(p string) bool { return strings.EqualFold(p, "bearer") })
			switch {
			case i < 0 && err != errNoBearer:
				t.Fatalf("offered %q without bearer: %q, %v", offered, tok, err)
			case i >= 0 && i+1 < len(offered) && tok != offered[i+1]:
				t.Fatalf("offered %q: took %q", offered, tok)
			case i >= 0 && i+1 == len(offered) && tok != "":
				t.Fatalf("bearer alone gave %q", tok)
			}
			return
		}
		if err != nil {
			t.Fatalf("no subprotocols: %v", err)
		}
		if scheme, bearer, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "bearer") {
			if tok != strings.TrimSpace(bearer) {
				t.Fatalf("Authorization %q: took %q", authorization, tok)
			}
			return
		}
		if q, perr := url.ParseQuery(query); perr == nil && tok != q.Get("token") {
			t.Fatalf("query %q: took %q", query, tok)
		}
	})
}

// FuzzRoute: any query either is refused with 400 or routes to one of the
// two upstreams with a forwarded query that holds neither service nor token
// and keeps the client's other parameters, in order, byte for byte.
func FuzzRoute(f *testing.F) {
	f.Add("service=agent&token=abc&model=nova-3")
	f.Add("service=transcription&encoding=linear16&sample_rate=16000")
	f.Add("TOKEN=x&Service=agent&service=agent")
	f.Add("a=%20&&b&=c&service")
	f.Add("service=%61gent&tok%65n=1")
	agent, _ := newUpstream("wss://agent.example/v1/agent/converse")
	listen, _ := newUpstream("wss://listen.example/v1/listen")
	rl := &relay{agent: agent, listen: listen}
	f.Fuzz(func(t *testing.T, query string) {
		service, up, forwarded, err := rl.route(query)
		if err != nil {
			return
		}
		if (service == "agent") != (up.base == agent.base) || (service != "agent" && service != "transcription") {
			t.Fatalf("%q routed %q to %v", query, service, up.base)
		}
		var kept []string
		for part := range strings.SplitSeq(query, "&") {
			k, _, _ := strings.Cut(part, "=")
			key, _ := url.QueryUnescape(k)
			if part != "" && key != "service" && !strings.EqualFold(key, "token") {
				kept = append(kept, part)
			}
		}
		if forwarded != strings.Join(kept, "&") {
			t.Fatalf("%q forwarded %q, want %q", query, forwarded, strings.Join(kept, "&"))
		}
	})
}
