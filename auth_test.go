package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"dgrelay/internal/fakedeepgram"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/sethvargo/go-envconfig"
)

const testJWTSecret = "a-shared-secret-of-at-least-32-bytes!!"

// claims is a token's payload; zero fields are left out.
type claims struct {
	sub, iss string
	aud      []string
	exp      time.Duration // from now; 0 leaves exp out
	nbf, iat time.Duration // from now; 0 leaves them out
	extra    string        // padding claim
}

func (c claims) mapClaims() jwt.MapClaims {
	m := jwt.MapClaims{}
	now := time.Now()
	if c.sub != "" {
		m["sub"] = c.sub
	}
	if c.iss != "" {
		m["iss"] = c.iss
	}
	if c.aud != nil {
		m["aud"] = c.aud
	}
	if c.exp != 0 {
		m["exp"] = now.Add(c.exp).Unix()
	}
	if c.nbf != 0 {
		m["nbf"] = now.Add(c.nbf).Unix()
	}
	if c.iat != 0 {
		m["iat"] = now.Add(c.iat).Unix()
	}
	if c.extra != "" {
		m["pad"] = c.extra
	}
	return m
}

func hs256(t *testing.T, secret string, c claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c.mapClaims()).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func signed(t *testing.T, method jwt.SigningMethod, kid string, key crypto.Signer, c claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c.mapClaims())
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksIssuer and jwksAudience are what the JWKS tests' relays require.
const jwksIssuer, jwksAudience = "https://auth.example.com/", "dgrelay"

// jwksEnv is a JWKS relay's authentication settings for the key set at url.
func jwksEnv(url string) map[string]string {
	return map[string]string{"ALLOW_UNAUTHENTICATED": "false", "JWKS_URL": url, "JWT_ISSUER": jwksIssuer, "JWT_AUDIENCE": jwksAudience}
}

var valid = claims{sub: "user-1", iss: jwksIssuer, aud: []string{jwksAudience}, exp: time.Hour, iat: -time.Minute}

// expectRefused dials with the token (query or subprotocol), expects the
// close code and reason, and checks that nothing was dialled upstream.
func expectRefused(t *testing.T, h *harness, query string, subprotocols []string, code websocket.StatusCode, reason string) {
	t.Helper()
	before := len(h.fake.Handshakes())
	c, err := h.tryDial(query, &websocket.DialOptions{Subprotocols: subprotocols})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ce := expectClose(t, c, code)
	if reason != "" && ce.Reason != reason {
		t.Errorf("reason %q, want %q", ce.Reason, reason)
	}
	if n := len(h.fake.Handshakes()); n != before {
		t.Errorf("a refused session dialled upstream")
	}
}

func TestHS256Tokens(t *testing.T) {
	// REFUSAL_WINDOW=0: every refusal in band, as this test reads each one's close.
	h := newHarness(t, map[string]string{
		"REFUSAL_WINDOW":        "0",
		"ALLOW_UNAUTHENTICATED": "false",
		"JWT_SECRET":            testJWTSecret,
		"JWT_ISSUER":            "https://auth.example.com/",
		"JWT_AUDIENCE":          "dgrelay,voice",
	}, fakedeepgram.Options{})
	good := claims{sub: "user-1", iss: "https://auth.example.com/", aud: []string{"voice"}, exp: time.Hour, iat: -time.Minute}
	with := func(f func(*claims)) claims { c := good; f(&c); return c }
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, good.mapClaims()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}

	refused := []struct {
		name, token, reason string
	}{
		{"no token", "", "token missing"},
		{"malformed", "not.a.jwt", "token invalid"},
		{"garbage", "%25%25%00", "token invalid"},
		{"bad signature", hs256(t, "another-secret-of-at-least-32-bytes!!!", good), "token invalid"},
		{"expired", hs256(t, testJWTSecret, with(func(c *claims) { c.exp = -time.Hour })), "token expired"},
		{"no exp", hs256(t, testJWTSecret, with(func(c *claims) { c.exp = 0 })), "token invalid"},
		{"not yet valid", hs256(t, testJWTSecret, with(func(c *claims) { c.nbf = time.Hour })), "token invalid"},
		{"issued in the future", hs256(t, testJWTSecret, with(func(c *claims) { c.iat = time.Hour })), "token invalid"},
		{"wrong issuer", hs256(t, testJWTSecret, with(func(c *claims) { c.iss = "https://evil.example.com/" })), "token invalid"},
		{"wrong audience", hs256(t, testJWTSecret, with(func(c *claims) { c.aud = []string{"other"} })), "token invalid"},
		{"no audience", hs256(t, testJWTSecret, with(func(c *claims) { c.aud = nil })), "token invalid"},
		{"no subject", hs256(t, testJWTSecret, with(func(c *claims) { c.sub = "" })), "token invalid"},
		{"alg none", none, "token invalid"},
		{"over 8 KiB", hs256(t, testJWTSecret, with(func(c *claims) { c.extra = strings.Repeat("x", 8<<10) })), "token invalid"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			q := "service=agent"
			if tc.token != "" {
				q += "&token=" + tc.token
			}
			expectRefused(t, h, q, nil, 4401, tc.reason)
		})
	}

	t.Run("expired within the leeway", func(t *testing.T) {
		c := h.dial("token=" + hs256(t, testJWTSecret, with(func(c *claims) { c.exp = -10 * time.Second })))
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("query token", func(t *testing.T) {
		c := h.dial("service=agent&token=" + hs256(t, testJWTSecret, good))
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("bearer subprotocol", func(t *testing.T) {
		c, err := h.tryDial("service=agent", &websocket.DialOptions{Subprotocols: []string{"bearer", hs256(t, testJWTSecret, good)}})
		if err != nil {
			t.Fatal(err)
		}
		if c.Subprotocol() != "bearer" {
			t.Fatalf("selected subprotocol %q, want bearer", c.Subprotocol())
		}
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("Authorization header", func(t *testing.T) {
		c, err := h.tryDial("service=agent", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + hs256(t, testJWTSecret, good)}}})
		if err != nil {
			t.Fatal(err)
		}
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("Authorization header with a Deepgram key", func(t *testing.T) {
		c, err := h.tryDial("service=agent", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Token some-deepgram-key"}}})
		if err != nil {
			t.Fatal(err)
		}
		if ce := expectClose(t, c, 4401); ce.Reason != "token missing" {
			t.Fatalf("reason %q", ce.Reason)
		}
	})
	t.Run("bearer without a token", func(t *testing.T) {
		expectRefused(t, h, "service=agent", []string{"bearer"}, 4401, "token missing")
	})
	t.Run("bearer with an expired token", func(t *testing.T) {
		expectRefused(t, h, "", []string{"bearer", hs256(t, testJWTSecret, with(func(c *claims) { c.exp = -time.Hour }))}, 4401, "token expired")
	})
	t.Run("subprotocols without bearer", func(t *testing.T) {
		_, err := h.tryDial("token="+hs256(t, testJWTSecret, good), &websocket.DialOptions{Subprotocols: []string{"token", "abc"}})
		if err == nil || !strings.Contains(err.Error(), "400") {
			t.Fatalf("want HTTP 400, got %v", err)
		}
	})
	t.Run("tokens are not logged", func(t *testing.T) {
		logs := h.logs.String()
		for _, tc := range refused {
			if len(tc.token) > 20 && strings.Contains(logs, tc.token) {
				t.Errorf("token of case %q is in the logs", tc.name)
			}
		}
		if !strings.Contains(logs, `"refusal":"token_expired"`) || !strings.Contains(logs, `"refusal":"token_bad_signature"`) {
			t.Errorf("refusals are not logged with their causes:\n%s", logs)
		}
	})
}

// jwksServer serves a JWK Set the test can change, and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []map[string]string
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T) *jwksServer {
	js := &jwksServer{}
	js.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		js.fetches.Add(1)
		js.mu.Lock()
		defer js.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": js.keys})
	}))
	t.Cleanup(js.Close)
	return js
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (js *jwksServer) add(kid string, pub crypto.PublicKey) {
	var k map[string]string
	switch p := pub.(type) {
	case *rsa.PublicKey:
		k = map[string]string{"kty": "RSA", "alg": "RS256", "n": b64(p.N.Bytes()), "e": b64(big.NewInt(int64(p.E)).Bytes())}
	case *ecdsa.PublicKey:
		point, _ := p.Bytes() // 0x04 || X || Y
		k = map[string]string{"kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:65])}
	case ed25519.PublicKey:
		k = map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(p)}
	}
	k["kid"], k["use"] = kid, "sig"
	js.mu.Lock()
	js.keys = append(js.keys, k)
	js.mu.Unlock()
}

func TestJWKSTokens(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	js := newJWKSServer(t)
	js.add("rsa-1", &rsaKey.PublicKey)
	js.add("ec-1", &ecKey.PublicKey)
	js.add("ed-1", edKey.Public())

	env := jwksEnv(js.URL + "/.well-known/jwks.json")
	env["REFUSAL_WINDOW"] = "0" // every refusal in band, as this test reads each one's close
	h := newHarness(t, env, fakedeepgram.Options{})

	for _, tc := range []struct {
		name   string
		method jwt.SigningMethod
		kid    string
		key    crypto.Signer
	}{
		{"RS256", jwt.SigningMethodRS256, "rsa-1", rsaKey},
		{"ES256", jwt.SigningMethodES256, "ec-1", ecKey},
		{"EdDSA", jwt.SigningMethodEdDSA, "ed-1", edKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dial("token=" + signed(t, tc.method, tc.kid, tc.key, valid))
			expectType(t, c, "Welcome")
			c.Close(websocket.StatusNormalClosure, "")
		})
	}

	t.Run("HS256 signed with the RSA public key", func(t *testing.T) {
		der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		for _, secret := range []string{string(pemKey), string(der)} {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, valid.mapClaims())
			tok.Header["kid"] = "rsa-1"
			forged, err := tok.SignedString([]byte(secret))
			if err != nil {
				t.Fatal(err)
			}
			expectRefused(t, h, "token="+forged, nil, 4401, "token invalid")
		}
	})
	t.Run("RS256 with the wrong key", func(t *testing.T) {
		other, _ := rsa.GenerateKey(rand.Reader, 2048)
		expectRefused(t, h, "token="+signed(t, jwt.SigningMethodRS256, "rsa-1", other, valid), nil, 4401, "token invalid")
	})
	t.Run("ES256 token under the RSA kid", func(t *testing.T) {
		expectRefused(t, h, "token="+signed(t, jwt.SigningMethodES256, "rsa-1", ecKey, valid), nil, 4401, "token invalid")
	})
	// A shared key set (Firebase's signs every project's tokens) is told
	// apart by audience and issuer.
	t.Run("another project's token on the same key set", func(t *testing.T) {
		other := valid
		other.aud = []string{"another-project"}
		expectRefused(t, h, "token="+signed(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, other), nil, 4401, "token invalid")
		other = valid
		other.iss = "https://another.example.com/"
		expectRefused(t, h, "token="+signed(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, other), nil, 4401, "token invalid")
	})
	t.Run("unknown kid refreshes once, rate-limited", func(t *testing.T) {
		before := js.fetches.Load()
		stranger, _ := rsa.GenerateKey(rand.Reader, 2048)
		expectRefused(t, h, "token="+signed(t, jwt.SigningMethodRS256, "unknown-1", stranger, valid), nil, 4401, "token invalid")
		if got := js.fetches.Load() - before; got != 1 {
			t.Errorf("%d JWKS fetches for an unknown kid, want 1", got)
		}
		for i := 0; i < 3; i++ {
			expectRefused(t, h, "token="+signed(t, jwt.SigningMethodRS256, "unknown-2", stranger, valid), nil, 4401, "token invalid")
		}
		if got := js.fetches.Load() - before; got != 1 {
			t.Errorf("%d JWKS fetches after a burst of unknown kids, want still 1", got)
		}
	})
}

// TestJWKSKeyRotation: a token signed by a key published after start is
// accepted once its unknown kid triggers a refresh.
func TestJWKSKeyRotation(t *testing.T) {
	js := newJWKSServer(t)
	first, _ := rsa.GenerateKey(rand.Reader, 2048)
	js.add("k1", &first.PublicKey)
	h := newHarness(t, jwksEnv(js.URL), fakedeepgram.Options{})
	rotated, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	js.add("k2", &rotated.PublicKey)
	c := h.dial("token=" + signed(t, jwt.SigningMethodES256, "k2", rotated, valid))
	expectType(t, c, "Welcome")
	c.Close(websocket.StatusNormalClosure, "")
}

func TestAuthStartErrors(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "ALLOW_UNAUTHENTICATED"},
		{map[string]string{"JWT_SECRET": "short"}, "JWT_SECRET"},
		{map[string]string{"JWT_SECRET": testJWTSecret, "JWKS_URL": "https://x.example.com/jwks"}, "set one"},
		{map[string]string{"JWKS_URL": "http://auth.example.com/jwks", "JWT_AUDIENCE": "dgrelay"}, "https"},
		{map[string]string{"JWKS_URL": "http://127.0.0.1:1/jwks", "JWT_AUDIENCE": "dgrelay"}, "JWKS_URL"},
		{map[string]string{"ALLOW_UNAUTHENTICATED": "true", "ALLOWED_ORIGINS": "[bad"}, "ALLOWED_ORIGINS"},
	}
	for _, tc := range cases {
		tc.env["DEEPGRAM_API_KEY"] = testAPIKey
		tc.env["PORT"] = freePort(t)
		tc.env["METRICS_PORT"] = "0"
		logs := &lockedBuffer{}
		if code := run(context.Background(), envconfig.MapLookuper(tc.env), logs, nil); code == 0 {
			t.Errorf("%v: started", tc.env)
		}
		if !strings.Contains(logs.String(), tc.want) {
			t.Errorf("%v: the error does not say %q: %s", tc.env, tc.want, logs)
		}
		if strings.Contains(logs.String(), testJWTSecret) {
			t.Errorf("the JWT secret is logged")
		}
	}
}

// TestJWKSNeedsAudience: a key set may be shared between many issuers'
// projects (Firebase signs every project's tokens with one), and only the
// audience tells a token for this app from one for another. So a JWKS relay
// without JWT_AUDIENCE does not start; JWT_AUDIENCE=* says on purpose that
// any audience goes (a key set that is the operator's alone), and is warned
// about, as is a missing JWT_ISSUER.
func TestJWKSNeedsAudience(t *testing.T) {
	js := newJWKSServer(t)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	js.add("k1", &key.PublicKey)
	start := func(env map[string]string) (int, string) {
		env["DEEPGRAM_API_KEY"], env["PORT"], env["METRICS_PORT"] = testAPIKey, freePort(t), "0"
		logs := &lockedBuffer{}
		sig := make(chan os.Signal, 1)
		done := make(chan int, 1)
		go func() { done <- run(context.Background(), envconfig.MapLookuper(env), logs, sig) }()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case code := <-done:
				return code, logs.String()
			case <-deadline:
				t.Fatalf("%v: run neither started nor stopped:\n%s", env, logs)
			case <-time.After(10 * time.Millisecond):
			}
			if strings.Contains(logs.String(), "dgrelay started") {
				sig <- syscall.SIGTERM
				return <-done, logs.String()
			}
		}
	}

	for _, env := range []map[string]string{
		{"JWKS_URL": js.URL},
		{"JWKS_URL": js.URL, "JWT_ISSUER": jwksIssuer},
		{"JWKS_URL": js.URL, "JWT_ISSUER": jwksIssuer, "JWT_AUDIENCE": ","},
	} {
		code, logs := start(env)
		if code != 1 || !strings.Contains(logs, `"message":"dgrelay cannot start"`) || !strings.Contains(logs, `JWT_AUDIENCE: `) {
			t.Errorf("%v: exit %d, want 1 with an error naming JWT_AUDIENCE:\n%s", env, code, logs)
		}
	}

	const noIssuer = "JWT_ISSUER is empty"
	const anyAudience = "JWT_AUDIENCE=*"
	for _, tc := range []struct {
		env  map[string]string
		warn []string
	}{
		{map[string]string{"JWKS_URL": js.URL, "JWT_ISSUER": jwksIssuer, "JWT_AUDIENCE": jwksAudience}, nil},
		{map[string]string{"JWKS_URL": js.URL, "JWT_AUDIENCE": jwksAudience}, []string{noIssuer}},
		{map[string]string{"JWKS_URL": js.URL, "JWT_ISSUER": jwksIssuer, "JWT_AUDIENCE": "*"}, []string{anyAudience}},
		{map[string]string{"JWKS_URL": js.URL, "JWT_AUDIENCE": "*"}, []string{noIssuer, anyAudience}},
		// A relay's own HS256 secret is shared with nobody else.
		{map[string]string{"JWT_SECRET": testJWTSecret}, nil},
	} {
		code, logs := start(tc.env)
		if code != 0 {
			t.Errorf("%v: exit %d:\n%s", tc.env, code, logs)
		}
		for _, w := range []string{noIssuer, anyAudience} {
			want := slices.Contains(tc.warn, w)
			if got := strings.Contains(logs, `"severity":"WARNING","message":"`+w); got != want {
				t.Errorf("%v: warning %q: %v, want %v:\n%s", tc.env, w, got, want, logs)
			}
		}
	}

	// With JWT_AUDIENCE=*, a token's aud is not checked, and it may have none.
	h := newHarness(t, map[string]string{"ALLOW_UNAUTHENTICATED": "false", "JWKS_URL": js.URL, "JWT_AUDIENCE": "*"}, fakedeepgram.Options{})
	for _, aud := range [][]string{nil, {"anything"}} {
		c := h.dial("token=" + signed(t, jwt.SigningMethodRS256, "k1", key, claims{sub: "u", aud: aud, exp: time.Hour}))
		expectType(t, c, "Welcome")
		c.Close(websocket.StatusNormalClosure, "")
	}
}
