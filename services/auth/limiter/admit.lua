-- One atomic admission for one API key (see services/auth/limiter/base.py for the semantics).
-- KEYS: 1 requests zset (rid -> admitted ms)   2 tokens zset (rid -> admitted ms)
--       3 tokens hash (rid -> tokens)          4 tokens-in-window sum
--       5 in-flight zset (rid -> lease deadline ms)   6 day hash (UTC day number -> tokens)
--       7 reservation record (for settle)
-- ARGV: 1 rid  2 reserve  3 window ms  4 rpm  5 tpm  6 daily quota (0 none)  7 max concurrent (0 none)  8 lease ms
-- Returns {allowed, code, wait ms, remaining requests, reset requests ms, remaining tokens, reset tokens ms}.
-- Time is Redis's own clock, so replicas with skewed clocks still share one window.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, reserve, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, quota, maxc, lease = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local horizon = now - window
local day = math.floor(now / 86400000)

-- Evict what left the window. Each entry is evicted once, so this is O(1) amortised.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
local freed = 0
for i = 1, #old, 500 do  -- unpack() in chunks: Lua's C stack holds about 8000 values
  local chunk = {unpack(old, i, math.min(i + 499, #old))}
  local amounts = redis.call('HMGET', KEYS[3], unpack(chunk))
  for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
  redis.call('HDEL', KEYS[3], unpack(chunk))
end
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  redis.call('DECRBY', KEYS[4], freed)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('HDEL', KEYS[6], day - 2)

local nreq = redis.call('ZCARD', KEYS[1])
local tsum = tonumber(redis.call('GET', KEYS[4]) or '0')
local used = tonumber(redis.call('HGET', KEYS[6], day) or '0')

local code, wait = '', -1
local function fail(c, w) if w > wait then code, wait = c, w end end

if maxc > 0 and reserve > 0 and redis.call('ZCARD', KEYS[5]) >= maxc then fail('concurrency_limit', 1000) end
if nreq + 1 > rpm then
  local e = redis.call('ZRANGE', KEYS[1], nreq - rpm, nreq - rpm, 'WITHSCORES')
  fail('rate_limit_requests', tonumber(e[2]) + window - now)
end
if tsum + reserve > tpm then
  if reserve > tpm then
    fail('tokens_exceed_limit', window)
  else
    -- The oldest reservations leave first: find the one whose exit makes room.
    local need, got, start, found = tsum + reserve - tpm, 0, 0, nil
    while not found do
      local batch = redis.call('ZRANGE', KEYS[2], start, start + 99, 'WITHSCORES')
      if #batch == 0 then found = window; break end
      local ids = {}
      for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
      local amounts = redis.call('HMGET', KEYS[3], unpack(ids))
      for i = 1, #ids do
        got = got + (tonumber(amounts[i]) or 0)
        if got >= need then found = tonumber(batch[2 * i]) + window - now; break end
      end
      start = start + 100
    end
    fail('rate_limit_tokens', found)
  end
end
if quota > 0 and used + reserve > quota then fail('quota_exceeded', (day + 1) * 86400000 - now) end

local function newest(key)
  local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #e == 0 then return 0 end
  return math.max(0, tonumber(e[2]) + window - now)
end

if code ~= '' then
  return {0, code, math.max(0, wait), math.max(0, rpm - nreq), newest(KEYS[1]), math.max(0, tpm - tsum), newest(KEYS[2])}
end

redis.call('ZADD', KEYS[1], now, rid)
redis.call('PEXPIRE', KEYS[1], window)
if reserve > 0 then
  redis.call('ZADD', KEYS[2], now, rid)
  redis.call('HSET', KEYS[3], rid, reserve)
  tsum = redis.call('INCRBY', KEYS[4], reserve)
  for k = 2, 4 do redis.call('PEXPIRE', KEYS[k], window) end
  redis.call('ZADD', KEYS[5], now + lease, rid)
  redis.call('PEXPIRE', KEYS[5], lease)
  redis.call('HINCRBY', KEYS[6], day, reserve)
  redis.call('PEXPIRE', KEYS[6], 2 * 86400000)
  redis.call('SET', KEYS[7], day .. ':' .. reserve, 'PX', lease + window)
end
return {1, '', 0, math.max(0, rpm - nreq - 1), window, math.max(0, tpm - tsum), newest(KEYS[2])}
