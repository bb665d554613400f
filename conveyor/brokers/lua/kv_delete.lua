-- Deletes a record; 1 when it was there.
-- KEYS: as kv_set.lua (the namespace's records and expiry set).
-- ARGV: key.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
