package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

const (
	// maxTokenBytes bounds what is handed to the JWT parser; real ID tokens
	// are 1-2 KiB.
	maxTokenBytes = 8 << 10
	// minSecretBytes is HS256's key size: a shorter JWT_SECRET can be guessed.
	minSecretBytes = 32
	// jwksTimeout bounds one JWKS fetch, at start and on refresh.
	jwksTimeout = 5 * time.Second
	// jwksRefreshInterval is how often the key set is fetched anyway.
	jwksRefreshInterval = time.Hour
	// jwksUnknownKIDEvery spaces the refreshes that an unknown kid triggers,
	// so a flood of forged kids cannot make the relay hammer the issuer.
	jwksUnknownKIDEvery = 30 * time.Second
)

// hmacMethods and publicKeyMethods pin the algorithm to the kind of key
// configured: a JWKS relay never accepts an HS256 token (which could be signed
// with a public key), a shared-secret relay never accepts anything else, and
// "none" is in neither list.
var (
	hmacMethods      = []string{"HS256"}
	publicKeyMethods = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

// authFailure is why a token was refused: end is how the client is answered
// (4401 with a short, fixed reason), label the finer cause for logs and
// metrics.
type authFailure struct {
	end   ending
	label string
}

var (
	errTokenMissing  = &authFailure{refuseTokenMissing, "missing"}
	errTokenTooLong  = &authFailure{refuseTokenInvalid, "too_long"}
	errTokenExpired  = &authFailure{refuseTokenExpired, "expired"}
	errTokenInvalid  = &authFailure{refuseTokenInvalid, "invalid"}
	errTokenNotYet   = &authFailure{refuseTokenInvalid, "not_yet_valid"}
	errTokenIssuer   = &authFailure{refuseTokenInvalid, "wrong_issuer"}
	errTokenAudience = &authFailure{refuseTokenInvalid, "wrong_audience"}
	errTokenSig      = &authFailure{refuseTokenInvalid, "bad_signature"}
	errTokenKey      = &authFailure{refuseTokenInvalid, "unknown_key"}
	errTokenSubject  = &authFailure{refuseTokenInvalid, "no_subject"}
)

func (f *authFailure) Error() string { return f.label }

// authenticator verifies users' tokens. With neither a secret nor a JWKS URL
// (ALLOW_UNAUTHENTICATED) it verifies nothing and the client's address is
// the identity.
type authenticator struct {
	parser  *jwt.Parser
	keyfunc jwt.Keyfunc
	stop    context.CancelFunc
}

// newAuthenticator builds the verifier the configuration asks for. A JWKS
// is fetched once here, so a wrong URL fails the start, not the first call.
func newAuthenticator(cfg *Config, client *http.Client, log *slog.Logger) (*authenticator, error) {
	hasSecret, hasJWKS := cfg.JWTSecret != "", cfg.JWKSURL != ""
	switch {
	case hasSecret && hasJWKS:
		return nil, errors.New("both JWT_SECRET and JWKS_URL are set; set one")
	case !hasSecret && !hasJWKS && !cfg.AllowUnauthenticated:
		return nil, errors.New("no user authentication: set JWT_SECRET (HS256) or JWKS_URL (RS256/ES256/EdDSA), " +
			"or ALLOW_UNAUTHENTICATED=true to let anyone spend your Deepgram key")
	case !hasSecret && !hasJWKS:
		return &authenticator{stop: func() {}}, nil
	}

	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(cfg.JWTLeeway)}
	if cfg.JWTIssuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.JWTIssuer))
	}
	if cfg.checksAudience() {
		opts = append(opts, jwt.WithAudience(cfg.JWTAudience...))
	}

	if hasSecret {
		if len(cfg.JWTSecret) < minSecretBytes {
			return nil, fmt.Errorf("JWT_SECRET: at least %d bytes are needed for HS256, got %d", minSecretBytes, len(cfg.JWTSecret))
		}
		secret := []byte(cfg.JWTSecret)
		return &authenticator{
			parser:  jwt.NewParser(append(opts, jwt.WithValidMethods(hmacMethods))...),
			keyfunc: func(*jwt.Token) (any, error) { return secret, nil },
			stop:    func() {},
		}, nil
	}

	// A key set may sign other apps' tokens too: Firebase signs every
	// project's with one, Google's accounts every OAuth client's. Only the
	// audience (the Firebase project, the OAuth client) tells a token for
	// this relay from one for another app; without it any user of any of
	// them could spend the key. "*" says on purpose that the key set signs
	// this app's tokens alone (an Auth0 tenant, a Clerk instance, whose
	// tokens may carry no aud).
	if len(cfg.JWTAudience) == 0 {
		return nil, errors.New("JWT_AUDIENCE: required with JWKS_URL, since a key set may sign other apps' tokens too " +
			"(Firebase's signs every project's): set your app's audience (Firebase: the project id), or * if the key set signs only yours")
	}
	if err := checkJWKSURL(cfg.JWKSURL); err != nil {
		return nil, fmt.Errorf("JWKS_URL: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	noStartWithoutKeys := false
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
		Client:                    client,
		HTTPTimeout:               jwksTimeout,
		RefreshInterval:           jwksRefreshInterval,
		RefreshUnknownKID:         rate.NewLimiter(rate.Every(jwksUnknownKIDEvery), 1),
		RateLimitWaitMax:          jwksTimeout,
		NoErrorReturnFirstHTTPReq: &noStartWithoutKeys,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				log.Warn("JWKS refresh failed", "jwks_url", u, "error", err.Error())
			}
		},
	})
	if err != nil {
		stop()
		return nil, fmt.Errorf("JWKS_URL: %w", err)
	}
	return &authenticator{
		parser:  jwt.NewParser(append(opts, jwt.WithValidMethods(publicKeyMethods))...),
		keyfunc: kf.KeyfuncCtx(ctx),
		stop:    stop,
	}, nil
}

// checkJWKSURL insists on https, so a network attacker cannot swap the keys;
// plain http is allowed on loopback only (tests, local issuers).
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("not a valid URL")
	}
	if u.Scheme == "https" {
		return nil
	}
	if u.Scheme == "http" {
		if ip := net.ParseIP(u.Hostname()); (ip != nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
			return nil
		}
	}
	return fmt.Errorf("scheme %q: must be https (http only on loopback)", u.Scheme)
}

// mode names the authentication in force, for the start line.
func (a *authenticator) mode(cfg *Config) string {
	switch {
	case cfg.JWKSURL != "":
		return "jwks"
	case cfg.JWTSecret != "":
		return "hs256"
	}
	return "none"
}

// enabled reports whether tokens are checked at all.
func (a *authenticator) enabled() bool { return a.parser != nil }

// verify checks token and returns its subject, the user's identity.
func (a *authenticator) verify(token string) (string, *authFailure) {
	if token == "" {
		return "", errTokenMissing
	}
	if len(token) > maxTokenBytes {
		return "", errTokenTooLong
	}
	var claims jwt.RegisteredClaims
	if _, err := a.parser.ParseWithClaims(token, &claims, a.keyfunc); err != nil {
		return "", classifyTokenError(err)
	}
	if claims.Subject == "" {
		return "", errTokenSubject
	}
	return claims.Subject, nil
}

// classifyTokenError maps a parser error to a fixed failure: the parser's
// own text is never logged, so nothing of the token is either.
func classifyTokenError(err error) *authFailure {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return errTokenExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return errTokenNotYet
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return errTokenIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return errTokenAudience
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return errTokenSig
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The keyfunc failed: an unknown kid, or a method outside the pinned list.
		return errTokenKey
	}
	return errTokenInvalid
}
