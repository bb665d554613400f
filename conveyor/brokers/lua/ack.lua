-- Ends the leases of deliveries of one queue: they are done.
-- KEYS: the queue's lease set and leased-entries hash (lz, lh).
-- ARGV: receipts...
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return 1
