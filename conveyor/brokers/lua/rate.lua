-- Shared rate limit: GCRA with no burst. Returns "0" (go now) or the seconds to wait.
-- KEYS: the limit's key (P:rl:<key>).
-- ARGV: interval seconds, now or "" (Redis's clock).
local interval = tonumber(ARGV[1])
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat and tat > now then return tostring(math.max(tat - now, 0.000001)) end
redis.call('SET', KEYS[1], string.format('%.6f', now + interval), 'PX', math.ceil(interval * 1000) + 1000)
return '0'
