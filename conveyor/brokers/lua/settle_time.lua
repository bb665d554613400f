-- Snippet: moves ran-out leases and due delays of one queue (its keys `k`) back to
-- its ready lists. Needs `now`.
local function settle_time(k, now)
  local gone = redis.call('ZRANGEBYSCORE', k.lz, '-inf', now, 'LIMIT', 0, 1000)
  for j = #gone, 1, -1 do
    local e = redis.call('HGET', k.lh, gone[j])
    if e then
      redis.call('LPUSH', k[tonumber(string.match(e, '^%d+|(%d+)|'))], e)
    end
  end
  if #gone > 0 then
    redis.call('ZREM', k.lz, unpack(gone))
    redis.call('HDEL', k.lh, unpack(gone))
  end
  local due = redis.call('ZRANGEBYSCORE', k.d, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local e = string.sub(m, string.find(m, '|', 1, true) + 1)
    redis.call('RPUSH', k[tonumber(string.match(e, '^%d+|(%d+)|'))], e)
  end
  if #due > 0 then redis.call('ZREM', k.d, unpack(due)) end
end
