-- Deletes one dead letter, if it is still there. Returns 1 when deleted.
-- KEYS: the dead letter (P:dlq:<id>), all dead letters, the queue's dead letters.
-- ARGV: id, queue (as read from the dead letter).
if redis.call('HGET', KEYS[1], 'q') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
