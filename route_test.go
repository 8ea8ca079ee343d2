package main

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzRoute: any query either is refused with 400 or routes to one of the
// two upstreams with a forwarded query that holds neither service nor token
// and keeps the client's other parameters, in order, byte for byte.
func FuzzRoute(f *testing.F) {
	f.Add("service=agent&token=abc&model=nova-3")
	f.Add("service=transcription&encoding=linear16&sample_rate=16000")
	f.Add("TOKEN=x&Service=agent&service=agent")
	f.Add("a=%20&&b&=c&service")
	f.Add("service=%61gent&tok%65n=1")
	f.Fuzz(func(t *testing.T, query string) {
		service, forwarded, err := routeAt("", query)
		if err != nil {
			return
		}
		if service != "agent" && service != "transcription" {
			t.Fatalf("%q routed to %q", query, service)
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
