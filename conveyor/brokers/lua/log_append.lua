-- Appends one append's events as one stream entry (a 'd' field per event) and keeps
-- the log at about `maxlen` events, oldest entries dropped first. Redis counts a
-- stream's entries, not their fields, so the events are counted beside it; once the
-- count passes the bound by 5%, the oldest entries go while at least `maxlen` stay.
-- KEYS: the log's stream (P:log:<stream>), its event count (P:{P:log:<stream>}:n:
-- the stream's name as hash tag puts it in the stream's own cluster slot).
-- ARGV: maxlen, events...
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = 'd'
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
local maxlen = tonumber(ARGV[1])
local count = redis.call('INCRBY', KEYS[2], #ARGV - 1)
if count <= maxlen + math.ceil(maxlen / 20) then return count end
local last_dropped, done = nil, false
while not done do
  local old = redis.call('XRANGE', KEYS[1], last_dropped and ('(' .. last_dropped) or '-', '+', 'COUNT', 100)
  if #old == 0 then break end
  for _, e in ipairs(old) do
    -- Whole entries only, and never below the bound.
    local size = #e[2] / 2
    -- Reaching this append's own entry, the count was off (the stream was deleted
    -- or trimmed by hand): it is what is left.
    if e[1] == id then count = size done = true break end
    if count - size < maxlen then done = true break end
    count = count - size
    last_dropped = e[1]
  end
end
-- `last_dropped` is the newest entry to drop (never this append's): everything up to it goes.
if last_dropped then
  local after = redis.call('XRANGE', KEYS[1], '(' .. last_dropped, '+', 'COUNT', 1)
  redis.call('XTRIM', KEYS[1], 'MINID', '=', after[1][1])
end
redis.call('SET', KEYS[2], math.max(count, 0))
return count
