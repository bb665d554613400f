-- Counts per queue: {name, ready, in_flight, delayed, dead, ...}. With forget = "1",
-- a queue with nothing at all leaves the queues set (and the answer).
-- KEYS: queues, then per queue its keys (queue_keys.lua) and its dead letters.
-- ARGV: forget ("1"/"0"), queues...
--#now
--#queue_keys
local out = {}
for i = 2, #ARGV do
  local q, base = ARGV[i], 1 + (i - 2) * (NQ + 1)
  local k = qkeys(base)
  local ready = 0
  for p = 0, 9 do ready = ready + redis.call('LLEN', k[p]) end
  local leased = redis.call('ZCOUNT', k.lz, '(' .. now, '+inf')
  local ran_out = redis.call('ZCOUNT', k.lz, '-inf', now)
  local delayed = redis.call('ZCOUNT', k.d, '(' .. now, '+inf')
  local due = redis.call('ZCOUNT', k.d, '-inf', now)
  local dead = redis.call('ZCARD', KEYS[base + NQ + 1])
  ready = ready + ran_out + due
  if ARGV[1] == '1' and ready + leased + delayed + dead == 0 then
    redis.call('SREM', KEYS[1], q)
  else
    out[#out + 1] = q
    out[#out + 1] = ready
    out[#out + 1] = leased
    out[#out + 1] = delayed
    out[#out + 1] = dead
  end
end
return out
