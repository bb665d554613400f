-- Drops what waits in one queue: ready, delayed and ran-out leases; not live leases.
-- Returns how many went.
-- KEYS: the queue's keys (queue_keys.lua).
--#now
--#queue_keys
local k = qkeys(0)
local count = 0
for p = 0, 9 do
  count = count + redis.call('LLEN', k[p])
  redis.call('DEL', k[p])
end
count = count + redis.call('ZCARD', k.d)
redis.call('DEL', k.d)
local gone = redis.call('ZRANGEBYSCORE', k.lz, '-inf', now)
for _, r in ipairs(gone) do
  redis.call('ZREM', k.lz, r)
  count = count + redis.call('HDEL', k.lh, r)
end
return count
