-- Keeps a log at about `maxlen` events, oldest entries dropped first. An append is
-- one stream entry (a 'd' field per event) and Redis counts a stream's entries, not
-- their fields, so appends count their events beside the stream; once the count has
-- passed the bound by 5%, this drops the oldest whole entries while `maxlen` stay.
-- Returns the count left.
-- KEYS: the log's stream (P:log:<stream>), its event count (P:{P:log:<stream>}:n:
-- the stream's name as hash tag puts it in the stream's own cluster slot).
-- ARGV: maxlen.
local maxlen = tonumber(ARGV[1])
local count = tonumber(redis.call('GET', KEYS[2])) or 0
if count <= maxlen then return count end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 then
  redis.call('SET', KEYS[2], 0)
  return 0
end
local id = newest[1][1]
-- A few entries per read: an entry can hold hundreds of events, all copied here.
local last_dropped, done = nil, false
while not done do
  local old = redis.call('XRANGE', KEYS[1], last_dropped and ('(' .. last_dropped) or '-', '+', 'COUNT', 16)
  if #old == 0 then break end
  for _, e in ipairs(old) do
    -- Whole entries only, and never below the bound.
    local size = #e[2] / 2
    -- Reaching the newest entry, the count was off (the stream was deleted or
    -- trimmed by hand): it is what is left.
    if e[1] == id then count = size done = true break end
    if count - size < maxlen then done = true break end
    count = count - size
    last_dropped = e[1]
  end
end
-- `last_dropped` is the newest entry to drop (never the newest): everything up to it goes.
if last_dropped then
  local after = redis.call('XRANGE', KEYS[1], '(' .. last_dropped, '+', 'COUNT', 1)
  redis.call('XTRIM', KEYS[1], 'MINID', '=', after[1][1])
end
redis.call('SET', KEYS[2], math.max(count, 0))
return count
