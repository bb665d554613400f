-- Set-if-absent that answers with the holder: the new owner or the one already there.
-- KEYS: the lease (P:lease:<name>).
-- ARGV: owner, ttl ms.
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
