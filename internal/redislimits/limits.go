// Package redislimits counts the per-user limits in Redis, shared by every
// relay instance that uses the same Redis and key prefix: a user's live
// sessions, its new-session rate and its session time per UTC day; and the
// live sessions of every instance together (the fleet's cap). Admit
// takes a session's lease or names the limit that refuses it (a Refusal,
// which the relay maps to its own answer); Renew renews an instance's
// leases, counting their time; End ends one.
//
// With REDIS_URL, each user's live sessions (MAX_SESSIONS_PER_USER),
// new-session rate (SESSION_RATE_PER_MINUTE) and session time per UTC day
// (MAX_USER_SECONDS_PER_DAY) are counted in Redis by every instance that
// shares it and REDIS_KEY_PREFIX, and so, with MAX_TOTAL_SESSIONS, are all
// their live sessions: each session's lease is in the fleet's set too, by
// the same expiry, so the cap counts what the per-user caps count. Redis is touched at admission, at each
// lease renewal (one pipeline per instance every renewal period, the
// relay's leaseRenewEvery) and at a session's end; never per frame.
//
// Every decision is one Lua script, so concurrent admissions on any number of
// instances cannot both pass a cap (no read-then-write). The scripts read the
// Redis server's clock (TIME): lease expiries, the rate and the day's
// boundary are all on one clock, so instances whose clocks disagree still
// agree on them. The relay measures only durations (session time, with
// its monotonic clock), which no skew changes.
//
// A user's keys, all in one Redis Cluster slot ({hash}):
//
//	PREFIX{user}:s  sorted set: live sessions' leases, scored by expiry (ms)
//	PREFIX{user}:r  the rate: the theoretical arrival time of the next session (GCRA)
//	PREFIX{user}:d  hash: the UTC day (days since 1970) and its session time (ms)
//	PREFIX{user}:t:<session id>  the session's time Redis has counted (ms), or "end"
//
// and, with MAX_TOTAL_SESSIONS, one key for the fleet:
//
//	PREFIX{fleet}:s  sorted set: every live session's lease, scored by expiry (ms)
//
// (A Redis Cluster endpoint is not supported: a script touches a user's
// slot and the fleet's.)
//
// user is the identity as the relay hashes it (its userKey): no sub, IP or
// token goes to Redis. The scripts are in scripts.go.
package redislimits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Limits is the relay's side of the limits in Redis.
type Limits struct {
	client  *redis.Client
	host    string // for log lines: never the URL, which may hold a password
	prefix  string
	timeout time.Duration
	ttl     time.Duration // Config.LeaseTTL
	endKeep time.Duration // how long a session's end is remembered
	// renewArgs are the lease script's arguments that every renewal
	// shares, boxed once: a round does not allocate them per session.
	renewArgs struct{ ttl, quotaOn, keep any }
	refuse    bool // REDIS_FAILURE=refuse
	// The limits, as the scripts take them (0: off).
	maxSessions           int
	maxTotal              int // MAX_TOTAL_SESSIONS; 0: the fleet's set is not kept
	rateInterval, burstMs int64
	quotaMs               int64
	log                   *slog.Logger
	metrics               Metrics
	// redact cleans an error for the log (the relay's scrubber, which
	// knows the Redis password too).
	redact func(string) string
	// down is set by the first failed call of an outage and cleared by the
	// next call begun since that succeeds. While it is set, admission does
	// not wait on Redis (the relay's renewal loop probes it every round).
	down atomic.Bool
	// outages counts the outages begun. A call notes it when it starts, so
	// that one already in flight when an outage began cannot end it: a
	// slow Redis answers some calls in time and not others, and each late
	// answer would end the outage, and the next failure log it again.
	outages atomic.Uint64
}

// ParseURL parses REDIS_URL. Errors never quote it: it may hold a
// password.
func ParseURL(raw string) (*redis.Options, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("not a valid URL")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("scheme %q: must be redis or rediss", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("the URL has no host")
	}
	opts, err := redis.ParseURL(raw)
	if err != nil {
		// go-redis names the database or path at fault, never the password.
		return nil, fmt.Errorf("not a valid Redis URL: %w", err)
	}
	return opts, nil
}

// quietRedisLog keeps go-redis's own log lines (plain text on stderr, one per
// failed dial) out of the relay's JSON log: the relay says once per outage
// what it means for the limits.
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietRedisLog{}) }

// Config is what New needs: REDIS_URL and the limits (0: off).
type Config struct {
	URL       string        // REDIS_URL
	Timeout   time.Duration // REDIS_TIMEOUT: every call's bound
	KeyPrefix string        // REDIS_KEY_PREFIX
	Refuse    bool          // REDIS_FAILURE=refuse: refuse while Redis is away
	// LeaseTTL is how long a lease lives after its last renewal.
	LeaseTTL             time.Duration
	MaxSessionsPerUser   int // MAX_SESSIONS_PER_USER
	SessionRatePerMinute int // SESSION_RATE_PER_MINUTE
	MaxUserSecondsPerDay int // MAX_USER_SECONDS_PER_DAY
	// MaxTotalSessions caps the live sessions of every instance sharing
	// the Redis and prefix (MAX_TOTAL_SESSIONS; 0: no cap, and the
	// fleet's set is not kept).
	MaxTotalSessions int
	Log              *slog.Logger // nil: no log lines
	Metrics          Metrics
}

// Metrics are the relay's series that the limits feed.
type Metrics struct {
	// Admission times each admission, by result (ok, error).
	Admission *prometheus.HistogramVec
	// Errors counts the calls that failed, by op (admit, renew, release).
	Errors *prometheus.CounterVec
	// Fallback is 1 during an outage.
	Fallback prometheus.Gauge
}

// New makes the Redis client. It does not connect: Redis down at
// start must not stop the start, and the first call finds out. Its error
// is ParseURL's.
func New(cfg Config) (*Limits, error) {
	opts, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	// Every call is bounded by REDIS_TIMEOUT, retries and dials included: a
	// retry would wait past the bound a client's connect waits for.
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = cfg.Timeout, cfg.Timeout, cfg.Timeout
	opts.ContextTimeoutEnabled = true
	opts.MaxRetries = -1
	opts.DialerRetries = 1
	opts.PoolTimeout = cfg.Timeout
	// No CLIENT SETINFO round trip per connection, no maintenance
	// notifications handshake: plain commands only, which every managed
	// Redis (Memorystore, Upstash, Fly's) takes.
	opts.DisableIdentity = true
	opts.Protocol = 2
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	sl := &Limits{
		client:      redis.NewClient(opts),
		host:        opts.Addr,
		prefix:      cfg.KeyPrefix,
		timeout:     cfg.Timeout,
		ttl:         cfg.LeaseTTL,
		endKeep:     endKeepLeases * cfg.LeaseTTL,
		refuse:      cfg.Refuse,
		maxSessions: cfg.MaxSessionsPerUser,
		maxTotal:    cfg.MaxTotalSessions,
		quotaMs:     int64(cfg.MaxUserSecondsPerDay) * 1000,
		log:         cfg.Log,
		metrics:     cfg.Metrics,
		redact:      func(s string) string { return s },
	}
	sl.renewArgs.ttl, sl.renewArgs.quotaOn, sl.renewArgs.keep = sl.ttl.Milliseconds(), "0", recordKeep.Milliseconds()
	if sl.quotaMs > 0 {
		sl.renewArgs.quotaOn = "1"
	}
	if cfg.SessionRatePerMinute > 0 {
		// The burst is a minute's worth, as the instance's own limiter:
		// a user may open them at once but not more in any minute on
		// average. The interval is rounded up to whole milliseconds and
		// the burst kept exact.
		sl.rateInterval = (60000 + int64(cfg.SessionRatePerMinute) - 1) / int64(cfg.SessionRatePerMinute)
		sl.burstMs = sl.rateInterval * int64(cfg.SessionRatePerMinute)
	}
	return sl, nil
}

// Close closes the Redis client.
func (sl *Limits) Close() { _ = sl.client.Close() }

// Host is Redis's address, for log lines: never the URL, which may hold a
// password.
func (sl *Limits) Host() string { return sl.host }

// Refuses reports whether new sessions are refused while Redis is away
// (REDIS_FAILURE=refuse).
func (sl *Limits) Refuses() bool { return sl.refuse }

// Down reports whether an outage is under way: admission does not wait on
// Redis then.
func (sl *Limits) Down() bool { return sl.down.Load() }

// SetRedact sets what cleans an error for the log (the relay's scrubber,
// which knows the Redis password too); by default errors go as they are.
func (sl *Limits) SetRedact(redact func(string) string) { sl.redact = redact }

// Keys are a user's keys: its leases, its rate and its day.
func (sl *Limits) Keys(user string) (leases, rate, day string) {
	base := sl.prefix + "{" + user + "}:"
	return base + "s", base + "r", base + "d"
}

// fleetKey is the key of the fleet's leases (MAX_TOTAL_SESSIONS): in a slot
// of its own, which no user's hash can name (a user's is hexadecimal).
func (sl *Limits) fleetKey() string { return sl.prefix + "{fleet}:s" }

// FleetKey is the key of the fleet's leases, "" when the fleet's cap is off:
// for tests and operators to look inside.
func (sl *Limits) FleetKey() string {
	if sl.maxTotal == 0 {
		return ""
	}
	return sl.fleetKey()
}

// withFleet is keys with the fleet's set after them when the cap is on: the
// scripts keep it only when it is named.
func (sl *Limits) withFleet(keys []string) []string {
	if sl.maxTotal > 0 {
		keys = append(keys, sl.fleetKey())
	}
	return keys
}

// totalKey is the key of a session's time as Redis has counted it: in its
// user's hash slot.
func (sl *Limits) totalKey(user, id string) string {
	return sl.prefix + "{" + user + "}:t:" + id
}

// ErrDown is Admit's answer during an outage: it did not wait on Redis.
var ErrDown = errors.New("redis is unreachable")

// Refusal is the limit that refuses a session, or None.
type Refusal int

// The limits Admit may name.
const (
	None         Refusal = iota // admitted
	Quota                       // the user's session time today (MAX_USER_SECONDS_PER_DAY)
	UserSessions                // the user's live sessions (MAX_SESSIONS_PER_USER)
	UserRate                    // the user's new sessions a minute (SESSION_RATE_PER_MINUTE)
	// Withdrawn: the session was withdrawn (End with withdraw) before its
	// admission landed: only an admission the relay gave up on hears it.
	Withdrawn
	TotalSessions // every instance's live sessions together (MAX_TOTAL_SESSIONS)
)

// Admit asks Redis to admit a session of user under the lease id. It
// returns the limit that refuses it (None: admitted) and the day's session
// time so far, or an error when Redis could not answer within
// REDIS_TIMEOUT (or is known to be away: ErrDown).
func (sl *Limits) Admit(user, id string) (refused Refusal, used time.Duration, err error) {
	began := sl.outages.Load()
	if sl.down.Load() {
		return None, 0, ErrDown
	}
	leases, rate, day := sl.Keys(user)
	ctx, cancel := context.WithTimeout(context.Background(), sl.timeout)
	defer cancel()
	start := time.Now()
	res, err := admitScript.Run(ctx, sl.client, sl.withFleet([]string{leases, rate, day, sl.totalKey(user, id)}),
		id, sl.ttl.Milliseconds(), sl.maxSessions, sl.rateInterval, sl.burstMs, sl.quotaMs, sl.maxTotal).Int64Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("admission script answered %d values", len(res))
	}
	if err != nil {
		sl.metrics.Admission.WithLabelValues("error").Observe(time.Since(start).Seconds())
		sl.failed("admit", err)
		return None, 0, err
	}
	sl.metrics.Admission.WithLabelValues("ok").Observe(time.Since(start).Seconds())
	sl.answered(began)
	used = time.Duration(res[1]) * time.Millisecond
	switch res[0] {
	case 1:
		return Quota, used, nil
	case 2:
		return UserSessions, used, nil
	case 3:
		return UserRate, used, nil
	case 4:
		// Withdrawn before it landed: only an admission the relay had
		// given up on (its call timed out) hears this.
		return Withdrawn, used, nil
	case 5:
		return TotalSessions, used, nil
	}
	return None, used, nil
}

// Lease is one lease's renewal, with the session's running total.
type Lease struct {
	Keys []string // LeaseKeys
	ID   string
	// Total is the session's time so far (ms); Base is what Redis last
	// said it counted of it, which stands in when Redis holds no total.
	Total, Base int64
	// The answer: the user's day so far and its live leases.
	Used time.Duration
	Live int64
}

// renewBatch is the most leases one pipeline carries: a round over
// thousands of sessions goes in a few round trips, without building every
// command at once.
const renewBatch = 256

// Renew sends updates in pipelines of renewBatch (a round trip for up to
// that many live sessions), all within one REDIS_TIMEOUT, and fills in
// their answers. With none, it pings: the renewal loop is also what finds
// Redis back after an outage. A batch that failed may have been run all
// the same (its answer lost): sent again next round, its totals add
// nothing twice.
func (sl *Limits) Renew(updates []Lease) error {
	began := sl.outages.Load()
	ctx, cancel := context.WithTimeout(context.Background(), sl.timeout)
	defer cancel()
	for start := 0; start == 0 || start < len(updates); start += renewBatch {
		if err := sl.renewBatch(ctx, updates[start:min(start+renewBatch, len(updates))]); err != nil {
			sl.failed("renew", err)
			return err
		}
	}
	sl.answered(began)
	return nil
}

// renewBatch runs one pipeline of Renew.
func (sl *Limits) renewBatch(ctx context.Context, updates []Lease) error {
	err := sl.exec(ctx, updates)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis restarted and forgot its scripts.
		if err = leaseScript.Load(ctx, sl.client).Err(); err == nil {
			err = sl.exec(ctx, updates)
		}
	}
	return err
}

// exec runs the lease script for each update in one pipeline.
func (sl *Limits) exec(ctx context.Context, updates []Lease) error {
	if len(updates) == 0 {
		return sl.client.Ping(ctx).Err()
	}
	pipe := sl.client.Pipeline()
	cmds := make([]*redis.Cmd, len(updates))
	for i, u := range updates {
		cmds[i] = leaseScript.EvalSha(ctx, pipe, u.Keys, u.ID, sl.renewArgs.ttl, u.Total, u.Base,
			sl.renewArgs.quotaOn, sl.renewArgs.keep, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i, c := range cmds {
		res, err := c.Int64Slice()
		if err != nil || len(res) != 2 {
			return fmt.Errorf("lease script: %v values, %w", len(res), err)
		}
		updates[i].Used, updates[i].Live = time.Duration(res[0])*time.Millisecond, res[1]
	}
	return nil
}

// end ends a session's lease (keys: leaseKeys), adding what Redis has yet
// to count of its total (ms; base as in Lease) to its user's day.
// withdraw ends one
// whose admission the relay gave up on (the call timed out, and the user
// was refused): Redis may have run it, and then gives its rate token back
// too; if the admission lands after the end, it admits nothing.
func (sl *Limits) End(keys []string, id string, total, base int64, withdraw bool) error {
	began := sl.outages.Load()
	ctx, cancel := context.WithTimeout(context.Background(), sl.timeout)
	defer cancel()
	var interval int64
	if withdraw {
		interval = sl.rateInterval
	}
	err := leaseScript.Run(ctx, sl.client, keys,
		id, 0, total, base, sl.renewArgs.quotaOn, sl.endKeep.Milliseconds(), interval).Err()
	if err != nil {
		sl.failed("release", err)
		return err
	}
	sl.answered(began)
	return nil
}

// LeaseKeys are the lease script's keys for a session of user (the fleet's
// set last, when its cap is on): made once per session, for every round.
func (sl *Limits) LeaseKeys(user, id string) []string {
	leases, rate, day := sl.Keys(user)
	return sl.withFleet([]string{leases, day, sl.totalKey(user, id), rate})
}

// failed records a call that Redis did not answer. The first of an outage is
// logged, with what the limits now are; every one is counted.
func (sl *Limits) failed(op string, err error) {
	if errors.Is(err, redis.ErrClosed) {
		return // the relay is stopping: a session's end after the drain
	}
	sl.metrics.Errors.WithLabelValues(op).Inc()
	if !sl.down.CompareAndSwap(false, true) {
		return
	}
	sl.outages.Add(1)
	sl.metrics.Fallback.Set(1)
	what := "per-user limits count on this instance only until it answers"
	if sl.maxTotal > 0 {
		what = "per-user limits and MAX_TOTAL_SESSIONS count on this instance only until it answers"
	}
	if sl.refuse {
		what = "new sessions are refused (LIMITS_UNAVAILABLE) until it answers; live ones go on"
	}
	sl.log.Warn("Redis unreachable: "+what, "redis_host", sl.host, "redis_op", op, "error", sl.redact(err.Error()))
}

// answered records a call that Redis answered, which ends an outage begun
// before the call was (began: outages when it started).
func (sl *Limits) answered(began uint64) {
	if sl.outages.Load() == began && sl.down.CompareAndSwap(true, false) {
		sl.metrics.Fallback.Set(0)
		sl.log.Info("Redis reachable again: per-user limits count across instances", "redis_host", sl.host)
	}
}
