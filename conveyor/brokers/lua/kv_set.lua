-- Stores a record, with an expiry or none. Expired records are dropped when seen.
-- KEYS: the namespace's records (P:kv:<ns>) and expiry set (P:kvx:<ns>).
-- ARGV: key, value, ttl seconds or "".
--#now
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
end
return 1
