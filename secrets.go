package main

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"regexp"
	"strings"
	"time"

	"dgrelay/internal/policy"

	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"github.com/sethvargo/go-envconfig"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// secretAccessTimeout bounds one Secret Manager read, so a start-up against
// an unreachable API fails with a message instead of hanging until the
// platform kills the instance.
const secretAccessTimeout = 10 * time.Second

// secretVersionName is the only form AccessSecretVersion takes; checking it
// first turns a typo into a clear start-up error rather than a gRPC one.
var secretVersionName = regexp.MustCompile(`^projects/[^/]+/secrets/[^/]+/versions/[^/]+$`)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// secretReader reads secret versions from Secret Manager. Its client is made
// on first use, so a relay that takes its key from the environment never
// needs Google credentials.
type secretReader struct {
	emulatorHost string
	client       *secretmanager.Client
}

func (s *secretReader) connect(ctx context.Context) error {
	if s.client != nil {
		return nil
	}
	var opts []option.ClientOption
	if s.emulatorHost != "" {
		opts = append(opts,
			option.WithEndpoint(s.emulatorHost),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		)
	}
	c, err := secretmanager.NewClient(ctx, opts...)
	if err != nil {
		return fmt.Errorf("secret manager client: %w", err)
	}
	s.client = c
	return nil
}

// access returns the payload of the secret version name, surrounding
// whitespace trimmed. Errors name the secret and the likely cause, never a
// value.
func (s *secretReader) access(ctx context.Context, name string) (string, error) {
	if !secretVersionName.MatchString(name) {
		return "", fmt.Errorf("secret %q: want projects/PROJECT/secrets/NAME/versions/VERSION (VERSION may be latest)", name)
	}
	if err := s.connect(ctx); err != nil {
		return "", fmt.Errorf("secret %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, secretAccessTimeout)
	defer cancel()
	resp, err := s.client.AccessSecretVersion(ctx, &secretmanagerpb.AccessSecretVersionRequest{Name: name})
	if err != nil {
		return "", fmt.Errorf("secret %s: %s: %w", name, secretErrorHint(err), err)
	}
	data := resp.GetPayload().GetData()
	if sum := resp.GetPayload().DataCrc32C; sum != nil && int64(crc32.Checksum(data, crc32c)) != *sum {
		return "", fmt.Errorf("secret %s: payload is corrupt (CRC32C mismatch)", name)
	}
	value := strings.TrimSpace(string(data))
	if value == "" {
		return "", fmt.Errorf("secret %s: payload is empty", name)
	}
	return value, nil
}

// secretErrorHint says what most often causes err, in the operator's terms.
func secretErrorHint(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %s (is the Secret Manager API enabled and reachable?)", secretAccessTimeout)
	}
	switch status.Code(err) {
	case codes.NotFound:
		return "not found (check the project, the secret's name and the version)"
	case codes.PermissionDenied:
		return "permission denied (the runtime service account needs roles/secretmanager.secretAccessor on this secret)"
	case codes.Unauthenticated:
		return "no valid Google credentials (on Cloud Run the runtime service account provides them; locally, gcloud auth application-default login does)"
	case codes.FailedPrecondition:
		return "the version is disabled or destroyed"
	case codes.DeadlineExceeded:
		return fmt.Sprintf("no answer within %s (is the Secret Manager API enabled and reachable?)", secretAccessTimeout)
	case codes.Unavailable:
		return "Secret Manager is unreachable"
	}
	return "read failed"
}

func (s *secretReader) close() {
	if s.client != nil {
		_ = s.client.Close()
	}
}

// loadAPIKey returns the Deepgram key and where it came from ("env" or the
// secret's name, for the start log line).
func loadAPIKey(ctx context.Context, cfg *Config, secrets *secretReader) (key, source string, err error) {
	fromEnv, fromSecret := cfg.DeepgramAPIKey != "", cfg.DeepgramAPIKeySecret != ""
	switch {
	case fromEnv && fromSecret:
		return "", "", errors.New("both DEEPGRAM_API_KEY and DEEPGRAM_API_KEY_SECRET are set; set exactly one")
	case !fromEnv && !fromSecret:
		return "", "", errors.New("no Deepgram key: set DEEPGRAM_API_KEY (the key) or DEEPGRAM_API_KEY_SECRET (projects/P/secrets/S/versions/V)")
	case fromEnv:
		key = strings.TrimSpace(cfg.DeepgramAPIKey)
		if key == "" {
			return "", "", errors.New("DEEPGRAM_API_KEY is only whitespace")
		}
		return key, "env", nil
	}
	key, err = secrets.access(ctx, cfg.DeepgramAPIKeySecret)
	if err != nil {
		return "", "", fmt.Errorf("DEEPGRAM_API_KEY_SECRET: %w", err)
	}
	return key, cfg.DeepgramAPIKeySecret, nil
}

// loadJWTSecret fills cfg.JWTSecret from Secret Manager when
// JWT_SECRET_SECRET names a version. It runs before the authenticator is
// built, which then checks the secret as if it had come from JWT_SECRET.
func loadJWTSecret(ctx context.Context, cfg *Config, secrets *secretReader) error {
	if cfg.JWTSecretSecret == "" {
		return nil
	}
	if cfg.JWTSecret != "" {
		return errors.New("both JWT_SECRET and JWT_SECRET_SECRET are set; set exactly one")
	}
	secret, err := secrets.access(ctx, cfg.JWTSecretSecret)
	if err != nil {
		return fmt.Errorf("JWT_SECRET_SECRET: %w", err)
	}
	cfg.JWTSecret = secret
	return nil
}

// loadPolicy reads SETTINGS_POLICY (internal/policy), its ${env:}
// references resolved from env and its ${secret:} ones from Secret Manager.
// An empty value is no policy.
func loadPolicy(ctx context.Context, value string, env envconfig.Lookuper, secrets *secretReader) (*policy.Policy, error) {
	return policy.Load(ctx, value, func(ctx context.Context, kind, name string) (string, error) {
		if kind == "secret" {
			return secrets.access(ctx, name)
		}
		v, _ := env.Lookup(name)
		return v, nil
	})
}
