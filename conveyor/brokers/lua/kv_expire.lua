-- Snippet: drops the namespace's expired records (KEYS[1] hash, KEYS[2] expiry set).
-- Needs `now`.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
