-- Trims a log's entries older than the cutoff; returns how many events they held
-- (an entry holds one append's events).
-- KEYS: the log's stream (P:log:<stream>), its event count (as log_bound.lua).
-- ARGV: cutoff (ms).
local k, stop = KEYS[1], '(' .. ARGV[1] .. '-0'
local count, start = 0, '-'
while true do
  local old = redis.call('XRANGE', k, start, stop, 'COUNT', 1000)
  for _, e in ipairs(old) do count = count + #e[2] / 2 end
  if #old < 1000 then break end
  start = '(' .. old[#old][1]
end
redis.call('XTRIM', k, 'MINID', '=', ARGV[1])
if count > 0 and redis.call('DECRBY', KEYS[2], count) < 0 then redis.call('SET', KEYS[2], 0) end
return count
