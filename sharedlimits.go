package main

import (
	"fmt"
	"log/slog"
	"time"

	"dgrelay/internal/redislimits"
)

// The limits shared across instances through Redis are internal/redislimits;
// here is the relay's side: its config and metrics handed over, and the
// refusals it names mapped to the relay's endings.

// The lease periods: a live session's lease is renewed every leaseRenewEvery
// and lapses leaseTTL after its last renewal, so the sessions of an instance
// killed without a drain free their users' places within leaseTTL +
// leaseRenewEvery. Tests shorten them.
var (
	leaseRenewEvery = 5 * time.Second
	leaseTTL        = 15 * time.Second
)

// newSharedLimits makes the Redis limits from the relay's config. It does
// not connect: Redis down at start must not stop the start.
func newSharedLimits(cfg *Config, log *slog.Logger, m *metrics) (*redislimits.Limits, error) {
	sl, err := redislimits.New(redislimits.Config{
		URL:                  cfg.RedisURL,
		Timeout:              cfg.RedisTimeout,
		KeyPrefix:            cfg.RedisKeyPrefix,
		Refuse:               cfg.RedisFailure == redisFailureRefuse,
		LeaseTTL:             leaseTTL,
		MaxSessionsPerUser:   cfg.MaxSessionsPerUser,
		SessionRatePerMinute: cfg.SessionRatePerMinute,
		MaxUserSecondsPerDay: cfg.MaxUserSecondsPerDay,
		MaxTotalSessions:     cfg.MaxTotalSessions,
		Log:                  log,
		Metrics:              redislimits.Metrics{Admission: m.redisAdmission, Errors: m.redisErrors, Fallback: m.redisFallback},
	})
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	return sl, nil
}

// sharedRefusal is the ending of the limit that Redis refused a session by;
// a zero ending when it admitted it. A withdrawn admission (one the relay
// had given up on) is told as Redis unreachable.
func sharedRefusal(r redislimits.Refusal) ending {
	switch r {
	case redislimits.Quota:
		return refuseQuota
	case redislimits.UserSessions:
		return refuseUserSessions
	case redislimits.UserRate:
		return refuseUserRate
	case redislimits.TotalSessions:
		return refuseCapacity
	case redislimits.Withdrawn:
		return refuseLimitsUnavailable
	}
	return ending{}
}

// limitsWhere says, for the start line, where the per-user limits count:
// Redis's host (never the URL, which may hold a password) and what happens
// while it is away (failure, REDIS_FAILURE), or the instance.
func limitsWhere(shared *redislimits.Limits, failure string) string {
	if shared == nil {
		return "instance"
	}
	return "redis " + shared.Host() + ", " + failure + " while unreachable"
}
