-- Renews leases of one queue that are still held (a lease that ran out is not revived).
-- KEYS: the queue's lease set (lz).
-- ARGV: lease seconds, receipts...
--#now
local untl = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', untl, ARGV[i]) end
return 1
