-- Puts one dead letter back on its queue (attempts reset), if it is still there.
-- Returns 1 when replayed.
-- KEYS: the dead letter (P:dlq:<id>), all dead letters, the queue's dead letters,
-- queues, then the queue's keys (queue_keys.lua).
-- ARGV: id, queue (as read from the dead letter).
--#queue_keys
local f = redis.call('HMGET', KEYS[1], 'q', 'p', 't', 'b')
if not f[1] or f[1] ~= ARGV[2] then return 0 end
local k = qkeys(4)
redis.call('RPUSH', k[tonumber(f[2])], '0|' .. f[2] .. '|' .. f[3] .. '\n' .. f[4])
redis.call('SADD', KEYS[4], f[1])
signal(k)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
