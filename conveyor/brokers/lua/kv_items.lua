-- Every record of the namespace, flat.
-- KEYS: as kv_set.lua (the namespace's records and expiry set).
--#now
--#kv_expire
return redis.call('HGETALL', KEYS[1])
