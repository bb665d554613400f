-- Snippet: takes a consumer's inbox (KEYS[2]): deliveries handed to it while it was
-- not listening. Each is kept (its lease renewed to `untl`) only while its receipt
-- still holds; one whose lease ran out is back in its queue already. Defines
-- `handed`; needs P and untl. Touches the lease keys of each handed delivery's queue
-- (named from the delivery: dynamic keys, in that queue's slot).
local handed = {}
local items = redis.call('LRANGE', KEYS[2], 0, -1)
if #items > 0 then
  redis.call('DEL', KEYS[2])
  for _, it in ipairs(items) do
    local a = string.find(it, '\n', 1, true)
    local b = string.find(it, '\n', a + 1, true)
    local r, q = string.sub(it, 1, a - 1), string.sub(it, a + 1, b - 1)
    if redis.call('HEXISTS', qkey(P, q, 'lh'), r) == 1 then
      redis.call('ZADD', qkey(P, q, 'lz'), 'XX', untl, r)
      handed[#handed + 1] = it
    end
  end
end
