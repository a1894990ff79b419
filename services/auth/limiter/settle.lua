-- Settle one reservation: its tokens become the tokens used, its concurrency slot is freed.
-- Idempotent: the reservation record is deleted, so a repeated settle returns 0 and changes nothing.
-- KEYS: 1 tokens zset  2 tokens hash  3 tokens sum  4 in-flight zset  5 day hash  6 reservation record
-- ARGV: 1 rid  2 tokens used
local rec = redis.call('GET', KEYS[6])
if not rec then return 0 end
local rid, used = ARGV[1], tonumber(ARGV[2])
local sep = string.find(rec, ':', 1, true)
local day, reserved = string.sub(rec, 1, sep - 1), tonumber(string.sub(rec, sep + 1))
local delta = used - reserved
-- Still inside the window: correct the window's sum. Already out: it no longer counts anyway.
if redis.call('HEXISTS', KEYS[2], rid) == 1 then
  redis.call('HSET', KEYS[2], rid, used)
  redis.call('INCRBY', KEYS[3], delta)
end
redis.call('ZREM', KEYS[4], rid)
if redis.call('HEXISTS', KEYS[5], day) == 1 then redis.call('HINCRBY', KEYS[5], day, delta) end
redis.call('DEL', KEYS[6])
return 1
