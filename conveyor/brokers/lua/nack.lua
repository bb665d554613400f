-- Gives a leased delivery back: into the delay set until retry_at, or at the head of
-- its ready list. Returns 0 when the lease was no longer held (nothing to give back).
-- KEYS: the queue's keys (queue_keys.lua), then its delay counter (P:{queue}:seq).
-- ARGV: receipt, retry_at or "".
--#now
--#queue_keys
local k = qkeys(0)
local r, at = ARGV[1], ARGV[2]
local e = redis.call('HGET', k.lh, r)
if not e then return 0 end
redis.call('HDEL', k.lh, r)
redis.call('ZREM', k.lz, r)
if at ~= '' and tonumber(at) > now then
  -- A unique member: two identical entries must not collapse into one.
  local s = redis.call('INCR', KEYS[NQ + 1])
  redis.call('ZADD', k.d, at, s .. '|' .. e)
else
  redis.call('LPUSH', k[tonumber(string.match(e, '^%d+|(%d+)|'))], e)
end
signal(k)
return 1
