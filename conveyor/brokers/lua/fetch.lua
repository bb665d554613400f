-- Leases up to `limit` ready messages from the queues, in order, after the
-- consumer's inbox. Returns {"D", {handed...}, qi, receipt, entry, ...} or
-- {"W", seconds to block}: with nothing due and block > 0 the consumer is registered
-- as waiting (for a direct hand-off) for that long. A full batch passes the wake-up
-- token on.
--
-- KEYS: the consumer's registration (P:wt:<id>) and inbox (P:in:<id>), then each
-- queue's keys (queue_keys.lua), queue by queue.
-- ARGV: prefix, lease seconds, limit, token, consumer id, block seconds, queues...
--#now
--#queue_keys
--#settle_time
local P, lease, limit, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local block, CID, Q0 = tonumber(ARGV[6]), 5, 7
local NQUEUES = #ARGV - Q0 + 1
local lmpop = (redis.REDIS_VERSION_NUM or 0) >= 0x070000  -- Redis 7; 6.2 pops list by list
local untl = now + lease
--#unwait
--#drain
local out = {'D', handed}
local n = #handed
for i = 1, NQUEUES do
  local k = qkeys(2 + (i - 1) * NQ)
  settle_time(k, now)
  if n < limit then
    local hargs, zargs = {}, {}
    local function take(got)
      for _, e in ipairs(got) do
        n = n + 1
        local sep = string.find(e, '|', 1, true)
        local e2 = (tonumber(string.sub(e, 1, sep - 1)) + 1) .. string.sub(e, sep)
        local r = token .. ':' .. n
        hargs[#hargs + 1] = r
        hargs[#hargs + 1] = e2
        zargs[#zargs + 1] = untl
        zargs[#zargs + 1] = r
        out[#out + 1] = i
        out[#out + 1] = r
        out[#out + 1] = e2
      end
    end
    if lmpop then
      -- LMPOP pops from the first non-empty list: one call per priority that has work.
      local args = {10}
      for p = 9, 0, -1 do args[#args + 1] = k[p] end
      args[12], args[13] = 'LEFT', 'COUNT'
      while n < limit do
        args[14] = limit - n
        local got = redis.call('LMPOP', unpack(args))
        if not got then break end
        take(got[2])
      end
    else
      for p = 9, 0, -1 do
        local got = redis.call('LPOP', k[p], limit - n)
        if got then take(got) end
        if n >= limit then break end
      end
    end
    if #hargs > 0 then
      redis.call('HSET', k.lh, unpack(hargs))
      redis.call('ZADD', k.lz, unpack(zargs))
      -- A full batch: more may wait. Pass the signal on to the next blocked consumer.
      if n >= limit then signal(k) end
    end
  end
end
if n > 0 then return out end
local nextdue = nil
for i = 1, NQUEUES do
  local k = qkeys(2 + (i - 1) * NQ)
  for _, z in ipairs({k.d, k.lz}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] then
      local at = tonumber(first[2])
      if nextdue == nil or at < nextdue then nextdue = at end
    end
  end
end
local wait = block
if nextdue then wait = math.min(wait, math.max(nextdue - now, 0.001)) end
if block > 0 then
  -- Registered until just after the wait; a consumer that stops waiting early
  -- clears it (or its next fetch does), and a killed one's lapses on its own.
  local reg = {'t', token, 'l', ARGV[2]}
  for i = Q0, #ARGV do
    reg[#reg + 1] = 'q:' .. ARGV[i]
    reg[#reg + 1] = 1
  end
  redis.call('HSET', KEYS[1], unpack(reg))
  redis.call('PEXPIRE', KEYS[1], math.floor(wait * 1000) + 250)
  for i = 1, NQUEUES do
    local w = qkeys(2 + (i - 1) * NQ).w
    -- A wait lasts seconds and every live waiter re-registers each time: an entry a
    -- minute old is a consumer that died waiting (publishes take the newest first,
    -- so they would not clear it).
    redis.call('ZREMRANGEBYSCORE', w, '-inf', now - 60)
    redis.call('ZADD', w, now, ARGV[CID])
    redis.call('PEXPIRE', w, math.floor(wait * 1000) + 60000)
  end
end
return {'W', tostring(wait)}
