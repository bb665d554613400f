-- Snippet: `now`, Redis's clock in seconds, so hosts with skewed clocks still agree
-- on when a lease runs out.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
