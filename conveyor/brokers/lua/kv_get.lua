-- One record, or nil.
-- KEYS: as kv_set.lua (the namespace's records and expiry set).
-- ARGV: key.
--#now
--#kv_expire
return redis.call('HGET', KEYS[1], ARGV[1])
