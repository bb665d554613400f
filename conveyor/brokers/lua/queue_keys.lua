-- Snippet: the keys of one queue, in the order the broker passes them (QUEUE_KEYS in
-- brokers/redis.py), all sharing the queue's hash tag. `qkeys(base)` reads them from
-- KEYS[base + 1 ..]; `qkey(P, q, part)` names one of another queue (dynamic keys).
local NQ = 15
local function qkeys(base)
  local k = {}
  for p = 0, 9 do k[p] = KEYS[base + 1 + p] end
  k.lz, k.lh, k.d, k.s, k.w = KEYS[base + 11], KEYS[base + 12], KEYS[base + 13], KEYS[base + 14], KEYS[base + 15]
  return k
end
local function qkey(P, q, part) return P .. ':{' .. q .. '}:' .. part end
local function signal(k)
  redis.call('LPUSH', k.s, 1)
  redis.call('LTRIM', k.s, 0, 0)
end
