package redislimits

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the limits in Redis (limits.go). Each reads the
// Redis server's clock (TIME), and each is one atomic step: no
// read-then-write across calls.
//
// A session's time reaches its user's day idempotently: every renewal and
// the end send the session's running total (ms since it began relaying),
// never a step's share of it, and Redis keeps the last total it counted
// per session (PREFIX{user}:t:<session id>) and adds only what a call
// brings beyond it. So a call that Redis ran but whose answer was lost (it
// timed out), sent again at the next round, adds nothing twice; nor does
// a late one, held in the network, that lands after a newer one. The
// difference is added to the day Redis's clock is in when it lands, as
// the steps were before: a session across midnight counts the step that
// crosses it in the new day.
//
// When Redis holds no total for a session (its first renewal, or Redis
// lost it: restarted without its data, or the session's renewals stopped
// for recordKeep), the relay's last confirmed total stands in (base): what
// Redis last said it counted.
//
// A session's end leaves the mark "end" in place of its total for a minute:
// a renewal or an admission of that session landing after its end (held in
// the network) neither brings its lease back, nor adds time, nor takes a
// rate token.

// recordKeep is how long Redis keeps a live session's total after its last
// renewal: a session whose renewals stop for an outage and resume within
// it still counts exactly once. Its end's mark stays endKeepLeases lease
// TTLs (a minute): far past a call's REDIS_TIMEOUT and any plausible delay
// in the network, at a small key per session ended within it.
const (
	recordKeep    = time.Hour
	endKeepLeases = 4
)

// admitScript admits one session of a user, or says which limit refuses it:
// {0, used} admitted, {1, used} the day's quota, {2, used} the live-session
// cap, {3, used} the rate, {5, used} the fleet's cap (KEYS[5], the fleet's
// set, when named, and ARGV[7]); used is the day's session time so far
// (ms). {4, 0}: the session was withdrawn before its admission landed (the
// relay gave up on it, see leaseScript), and nothing is taken. The user's
// own limits are named before the fleet's (they are the user's to
// change), and the rate is taken only once every cap has passed.
var admitScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[4]) == 1 then return {4, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = 0
local quota = tonumber(ARGV[6])
if quota > 0 then
  local u = redis.call('HMGET', KEYS[3], 'day', 'ms')
  if tonumber(u[1]) == day then used = tonumber(u[2]) or 0 end
  if used >= quota then return {1, used} end
end
local max = tonumber(ARGV[3])
if max > 0 and redis.call('ZCARD', KEYS[1]) >= max then return {2, used} end
if KEYS[5] then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[7]) then return {5, used} end
end
local interval = tonumber(ARGV[4])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2])) or now
  if tat < now then tat = now end
  tat = tat + interval
  if tat - now > tonumber(ARGV[5]) then return {3, used} end
  redis.call('SET', KEYS[2], tat, 'PX', tat - now)
end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
if KEYS[5] then
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[5], ttl)
end
return {0, used}
`)

// leaseScript renews a session's lease (ARGV[2] the TTL in ms) or ends it
// (0). KEYS: the user's leases, its day, the session's total, the user's
// rate. ARGV[3] is the session's running total (ms) and ARGV[4] the base
// that stands in for a total Redis does not hold; the difference is added
// to the user's day when the quota is on (ARGV[5] "1"). ARGV[6] is how long
// the total (recordKeep), or the end's mark, is kept. ARGV[7],
// at an end, is the rate's interval when the relay withdraws an admission
// whose answer it never had: if the admission had landed (its lease is
// there), its rate token is given back too. It returns {the day's session
// time (ms), the user's live leases}. A lease that lapsed while Redis was
// away is added again: counting resumes. KEYS[5], when named, is the
// fleet's set (MAX_TOTAL_SESSIONS): the lease is renewed, added again or
// ended there alike.
var leaseScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local quota = ARGV[5] == '1'
local used = 0
if quota then
  local u = redis.call('HMGET', KEYS[2], 'day', 'ms')
  if tonumber(u[1]) == day then used = tonumber(u[2]) or 0 end
end
local rec = redis.call('GET', KEYS[3])
if rec ~= 'end' then
  local total = tonumber(ARGV[3])
  local last = tonumber(rec) or tonumber(ARGV[4])
  if quota and total > last then
    used = used + total - last
    redis.call('HSET', KEYS[2], 'day', day, 'ms', used)
    redis.call('PEXPIREAT', KEYS[2], (day + 2) * 86400000)
  end
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ttl)
    if KEYS[5] then
      redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
      redis.call('PEXPIRE', KEYS[5], ttl)
    end
    redis.call('SET', KEYS[3], math.max(total, last), 'PX', ARGV[6])
  else
    local removed = redis.call('ZREM', KEYS[1], ARGV[1])
    if KEYS[5] then redis.call('ZREM', KEYS[5], ARGV[1]) end
    redis.call('SET', KEYS[3], 'end', 'PX', ARGV[6])
    local interval = tonumber(ARGV[7])
    if removed == 1 and interval > 0 then
      local tat = tonumber(redis.call('GET', KEYS[4]))
      if tat then
        tat = tat - interval
        if tat > now then
          redis.call('SET', KEYS[4], tat, 'PX', tat - now)
        else
          redis.call('DEL', KEYS[4])
        end
      end
    end
  end
end
return {used, redis.call('ZCARD', KEYS[1])}
`)
