-- Publishes one ready message. Direct hand-off: when the queue has nothing ready and
-- a consumer is blocked waiting on it, leases the entry to that consumer (as fetch
-- would) and pushes it onto the consumer's inbox, which its BLPOP watches (returns
-- 2); otherwise queues it and leaves the wake-up token (1), or queues it alone when
-- nobody waits on the queue (0).
--
-- The consumer that began waiting last gets it: it has just finished a task, so its
-- process (and the CPU it ran on) is the one most likely still awake (measured in
-- docs/benchmarks.md: a lower round trip than taking the longest-waiting one).
--
-- No waiting set, no token: only a consumer whose fetch registered it in the queue's
-- waiting set blocks on the queue's token list, and its entry leaves that set only
-- when it stops waiting (its next fetch), when a publish hands it a message, or when
-- the set expires, a minute after the last registration (a wait lasts seconds). A
-- publish that pops stale entries until the set is gone still leaves the token.
--
-- KEYS: queues, then the queue's keys (queue_keys.lua).
-- Also touches the chosen consumer's registration and inbox (P:wt:<id>, P:in:<id>).
-- ARGV: prefix, queue, priority, entry.
--#queue_keys
local P, q, p, e = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local k = qkeys(1)
redis.call('SADD', KEYS[1], q)
if redis.call('EXISTS', k.w) == 0 then
  redis.call('RPUSH', k[p], e)
  return 0
end
if redis.call('EXISTS', k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8], k[9]) == 0 then
  while true do
    local got = redis.call('ZPOPMAX', k.w)
    if #got == 0 then break end
    local cid = got[1]
    local wt = P .. ':wt:' .. cid
    -- Stale unless the consumer still waits, and on this queue (its queues may change).
    local reg = redis.call('HMGET', wt, 't', 'l', 'q:' .. q)
    if reg[3] then
      -- One hand-off per wait: the consumer's other registrations go stale with this.
      redis.call('DEL', wt)
      local t = redis.call('TIME')
      local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
      local lease = tonumber(reg[2])
      local r = reg[1] .. ':h'
      local s2 = string.find(e, '|', 1, true)
      local e2 = (tonumber(string.sub(e, 1, s2 - 1)) + 1) .. string.sub(e, s2)
      redis.call('HSET', k.lh, r, e2)
      redis.call('ZADD', k.lz, now + lease, r)
      local inbox = P .. ':in:' .. cid
      redis.call('RPUSH', inbox, r .. '\n' .. q .. '\n' .. e2)
      -- Useless once the lease has run out: the entry is back in its queue by then.
      redis.call('PEXPIRE', inbox, math.floor(lease * 1000) + 60000)
      return 2
    end
  end
end
redis.call('RPUSH', k[p], e)
signal(k)
return 1
