package main

import (
	"context"
	"dgrelay/internal/fakedeepgram"
	"hash/crc32"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"github.com/coder/websocket"
	"github.com/sethvargo/go-envconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeSecretManager is the real SecretManagerService gRPC API, served in
// process on loopback, holding a few versions and errors.
type fakeSecretManager struct {
	secretmanagerpb.UnimplementedSecretManagerServiceServer
	mu       sync.Mutex
	payloads map[string]*secretmanagerpb.SecretPayload
	errs     map[string]codes.Code
	calls    int
}

func (f *fakeSecretManager) AccessSecretVersion(_ context.Context, req *secretmanagerpb.AccessSecretVersionRequest) (*secretmanagerpb.AccessSecretVersionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if code, ok := f.errs[req.GetName()]; ok {
		return nil, status.Errorf(code, "fake: %s", code)
	}
	p, ok := f.payloads[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "Secret [%s] not found or has no versions.", req.GetName())
	}
	return &secretmanagerpb.AccessSecretVersionResponse{Name: req.GetName(), Payload: p}, nil
}

// startFakeSecretManager serves f on 127.0.0.1 and returns its host:port,
// the value SECRETMANAGER_EMULATOR_HOST takes.
func startFakeSecretManager(t *testing.T, f *fakeSecretManager) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	secretmanagerpb.RegisterSecretManagerServiceServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// withCRC is a payload whose checksum is right.
func withCRC(data string) *secretmanagerpb.SecretPayload {
	sum := int64(crc32.Checksum([]byte(data), crc32.MakeTable(crc32.Castagnoli)))
	return &secretmanagerpb.SecretPayload{Data: []byte(data), DataCrc32C: &sum}
}

func TestLoadAPIKey(t *testing.T) {
	const name = "projects/p/secrets/deepgram/versions/latest"
	bad := int64(12345)
	fake := &fakeSecretManager{
		payloads: map[string]*secretmanagerpb.SecretPayload{
			name:                                    withCRC("  " + testAPIKey + "\n"),
			"projects/p/secrets/nocrc/versions/1":   {Data: []byte(testAPIKey)},
			"projects/p/secrets/corrupt/versions/1": {Data: []byte(testAPIKey), DataCrc32C: &bad},
			"projects/p/secrets/blank/versions/1":   withCRC(" \n"),
		},
		errs: map[string]codes.Code{
			"projects/p/secrets/denied/versions/1": codes.PermissionDenied,
		},
	}
	host := startFakeSecretManager(t, fake)

	cases := []struct {
		name    string
		env     map[string]string
		source  string
		wantErr []string
	}{
		{"from the environment", map[string]string{"DEEPGRAM_API_KEY": " " + testAPIKey + " "}, "env", nil},
		{"from Secret Manager, trimmed, CRC checked", map[string]string{"DEEPGRAM_API_KEY_SECRET": name}, name, nil},
		{"from Secret Manager without a CRC", map[string]string{"DEEPGRAM_API_KEY_SECRET": "projects/p/secrets/nocrc/versions/1"}, "projects/p/secrets/nocrc/versions/1", nil},
		{"both", map[string]string{"DEEPGRAM_API_KEY": "k", "DEEPGRAM_API_KEY_SECRET": name}, "", []string{"both", "exactly one"}},
		{"neither", map[string]string{}, "", []string{"DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY_SECRET"}},
		{"not found", map[string]string{"DEEPGRAM_API_KEY_SECRET": "projects/p/secrets/missing/versions/3"}, "", []string{"projects/p/secrets/missing/versions/3", "not found"}},
		{"permission denied", map[string]string{"DEEPGRAM_API_KEY_SECRET": "projects/p/secrets/denied/versions/1"}, "", []string{"projects/p/secrets/denied/versions/1", "roles/secretmanager.secretAccessor"}},
		{"corrupt", map[string]string{"DEEPGRAM_API_KEY_SECRET": "projects/p/secrets/corrupt/versions/1"}, "", []string{"CRC32C"}},
		{"empty", map[string]string{"DEEPGRAM_API_KEY_SECRET": "projects/p/secrets/blank/versions/1"}, "", []string{"empty"}},
		{"malformed name", map[string]string{"DEEPGRAM_API_KEY_SECRET": "deepgram-key"}, "", []string{"projects/PROJECT/secrets/NAME/versions/VERSION"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.env["SECRETMANAGER_EMULATOR_HOST"] = host
			cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			secrets := &secretReader{emulatorHost: cfg.SecretManagerEmulatorHost}
			defer secrets.close()
			key, source, err := loadAPIKey(context.Background(), cfg, secrets)
			if tc.wantErr == nil {
				if err != nil || key != testAPIKey || source != tc.source {
					t.Fatalf("got %q from %q, %v", key, source, err)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), testAPIKey) {
				t.Errorf("the error holds the key: %v", err)
			}
		})
	}
}

// TestRunReadsKeyFromSecretManager starts the whole relay with its key in
// Secret Manager and checks the start line names the secret, not the key.
func TestRunReadsKeyFromSecretManager(t *testing.T) {
	const name = "projects/p/secrets/deepgram/versions/7"
	fake := &fakeSecretManager{payloads: map[string]*secretmanagerpb.SecretPayload{name: withCRC(testAPIKey)}}
	host := startFakeSecretManager(t, fake)
	logs := &lockedBuffer{}
	sig := make(chan os.Signal, 1)
	done := make(chan int)
	go func() {
		done <- run(context.Background(), envconfig.MapLookuper(map[string]string{
			"PORT":                        freePort(t),
			"DEEPGRAM_API_KEY_SECRET":     name,
			"SECRETMANAGER_EMULATOR_HOST": host,
			"ALLOW_UNAUTHENTICATED":       "true",
			"METRICS_PORT":                freePort(t),
		}), logs, sig)
	}()
	waitForLog(t, logs, "dgrelay started")
	sig <- syscall.SIGTERM
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d", code)
	}
	out := logs.String()
	if !strings.Contains(out, `"key_source":"`+name+`"`) {
		t.Errorf("the start line does not name the secret:\n%s", out)
	}
	if !strings.Contains(out, `"trust_proxy_headers":"off","upstream_retries":1`) {
		t.Errorf("the start line does not give the client IP source and the retries:\n%s", out)
	}
	if strings.Contains(out, testAPIKey) {
		t.Errorf("the key is logged:\n%s", out)
	}
}

// TestRunReadsJWTSecretFromSecretManager: with JWT_SECRET_SECRET the relay
// verifies users' tokens with the secret kept in Secret Manager, as a Cloud
// Build deploy sets it; a token signed with anything else is refused, and
// JWT_SECRET set beside it stops the start.
func TestRunReadsJWTSecretFromSecretManager(t *testing.T) {
	const name = "projects/p/secrets/jwt-secret/versions/latest"
	fake := &fakeSecretManager{payloads: map[string]*secretmanagerpb.SecretPayload{name: withCRC(testJWTSecret + "\n")}}
	host := startFakeSecretManager(t, fake)
	upstream := fakedeepgram.Start(fakedeepgram.Options{APIKey: testAPIKey})
	t.Cleanup(upstream.Close)
	port := freePort(t)
	env := map[string]string{
		"PORT":                        port,
		"DEEPGRAM_API_KEY":            testAPIKey,
		"DEEPGRAM_AGENT_URL":          upstream.URL + "/v1/agent/converse",
		"JWT_SECRET_SECRET":           name,
		"SECRETMANAGER_EMULATOR_HOST": host,
		"METRICS_PORT":                "0",
	}
	logs := &lockedBuffer{}
	sig := make(chan os.Signal, 1)
	done := make(chan int)
	go func() { done <- run(context.Background(), envconfig.MapLookuper(env), logs, sig) }()
	waitForLog(t, logs, "dgrelay started")

	relay := "ws://127.0.0.1:" + port + "/ws/deepgram-proxy/?token="
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, relay+userToken(t, "u1"), nil)
	if err != nil {
		t.Fatalf("dial with a token signed by the secret in Secret Manager: %v", err)
	}
	expectType(t, c, "Welcome")
	c.Close(websocket.StatusNormalClosure, "")
	other := hs256(t, "another-secret-of-at-least-32-bytes!!!", claims{sub: "u1", exp: time.Hour})
	c, _, err = websocket.Dial(ctx, relay+other, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	expectClose(t, c, 4401)

	sig <- syscall.SIGTERM
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if strings.Contains(logs.String(), testJWTSecret) {
		t.Errorf("the JWT secret is logged:\n%s", logs.String())
	}

	env["JWT_SECRET"] = testJWTSecret
	logs = &lockedBuffer{}
	if code := run(context.Background(), envconfig.MapLookuper(env), logs, sig); code != 1 || !strings.Contains(logs.String(), "both JWT_SECRET and JWT_SECRET_SECRET") {
		t.Errorf("JWT_SECRET with JWT_SECRET_SECRET: exit %d\n%s", code, logs.String())
	}
}
