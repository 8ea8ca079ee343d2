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
	f.Add("service=agent&x=1;token=SECRET")
	f.Add("token=abc&kw=a;b")
	f.Fuzz(func(t *testing.T, query string) {
		service, forwarded, err := routeAt("", query)
		if err != nil {
			return
		}
		// What routes, net/url reads whole (tokenFrom finds the token in
		// it), and what is forwarded holds no token and no service, read
		// as net/url reads it.
		if _, err := url.ParseQuery(query); err != nil {
			t.Fatalf("%q routed, but net/url refuses it: %v", query, err)
		}
		fq, perr := url.ParseQuery(forwarded)
		if perr != nil {
			t.Fatalf("%q forwarded %q, which net/url refuses: %v", query, forwarded, perr)
		}
		for k := range fq {
			if k == "service" || strings.EqualFold(k, "token") {
				t.Fatalf("%q forwarded %q, with %s", query, forwarded, k)
			}
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
