-- Moves a leased delivery to the dead letters. Returns the dead letter's id.
-- KEYS: dead-letter counter (P:dlq:seq), all dead letters (P:dlq:all), the queue's
-- dead letters (P:{queue}:dlq), queues, the queue's lz and lh.
-- Also touches the new dead letter's hash (P:dlq:<id>, named from the counter).
-- ARGV: prefix, queue, receipt, priority, task id, task name, reason, failed_at, body.
local P, q, r = ARGV[1], ARGV[2], ARGV[3]
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', P .. ':dlq:' .. id, 'q', q, 'p', ARGV[4], 't', ARGV[5], 'n', ARGV[6],
  'r', ARGV[7], 'f', ARGV[8], 'b', ARGV[9])
redis.call('ZADD', KEYS[2], id, id)
redis.call('ZADD', KEYS[3], id, id)
redis.call('SADD', KEYS[4], q)
redis.call('ZREM', KEYS[5], r)
redis.call('HDEL', KEYS[6], r)
return id
