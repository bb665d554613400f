"""The Redis broker: many workers on many hosts, one Redis (``redis://``).

Layout (``P`` is the key prefix, ``conveyor`` unless the URL says ``?prefix=``):

- ``P:q:<queue>:<0-9>``   list per priority: ready entries, FIFO (RPUSH, LPOP)
- ``P:lz:<queue>``        sorted set: receipt -> lease end (epoch s, Redis clock)
- ``P:lh:<queue>``        hash: receipt -> leased entry
- ``P:d:<queue>``         sorted set: "<seq>|<entry>" -> eta (delays, retries)
- ``P:s:<queue>``         list of at most one token, pushed on a publish while
                          consumers wait on the queue: the wake-up they BLPOP
- ``P:w:<queue>``         sorted set: consumer id -> time it began waiting (hand-off)
- ``P:wt:<consumer>``     hash while that consumer waits: fetch token, lease seconds,
                          one field per queue; expires just after its wait
- ``P:in:<consumer>``     list: deliveries handed to that consumer, already leased
- ``P:queues``            set of queue names
- ``P:dlq:<id>``          hash per dead letter; ``P:dlq:all`` and ``P:dlq:q:<queue>``
                          sorted sets of ids (score = id)
- ``P:rl:<key>``, ``P:lease:<name>``, ``P:kv:<ns>`` (+ ``P:kvx:<ns>``), ``P:log:<stream>``

An entry is ``b"<attempts>|<priority>|<task id>\\n" + body``. Every state change
that reads before it writes (lease, reclaim, promote, ack, nack, dead-letter) is one
Lua script, so it is atomic across every client; so is publishing one ready message
(it may hand the message straight to a waiting consumer); the rest of publishing
is plain commands.
Times inside scripts come from Redis's clock (``TIME``), so hosts with skewed
clocks still agree on when a lease runs out.

Why lists and not Streams with consumer groups: docs/brokers.md, "Redis".
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from conveyor import _redis
from conveyor._redis import RedisLink, Script
from conveyor.brokers.base import DeadLetter, Delivery, QueueStats, check_name
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, decode

if TYPE_CHECKING:
    from conveyor.backends.redis import RedisBackend

_LOG_ID = re.compile(r"\d+(-\d+)?")
PUBLISH_CHUNK = 1000  # entries per command in publish_many (all sent in one round trip)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# ARGV: prefix, then (queue, priority, eta or "", entry) per message.
_PUBLISH = Script(
    _NOW
    + """
local P = ARGV[1]
local lists, order, woke = {}, {}, {}
for i = 2, #ARGV, 4 do
  local q, eta, e = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  if eta ~= '' and tonumber(eta) > now then
    local s = redis.call('INCR', P .. ':seq')
    redis.call('ZADD', P .. ':d:' .. q, eta, s .. '|' .. e)
  else
    local k = P .. ':q:' .. q .. ':' .. ARGV[i + 1]
    local l = lists[k]
    if not l then l = {}; lists[k] = l; order[#order + 1] = k end
    l[#l + 1] = e
  end
  if not woke[q] then
    woke[q] = true
    redis.call('SADD', P .. ':queues', q)
  end
end
for _, k in ipairs(order) do redis.call('RPUSH', k, unpack(lists[k])) end
for q in pairs(woke) do
  redis.call('LPUSH', P .. ':s:' .. q, 1)
  redis.call('LTRIM', P .. ':s:' .. q, 0, 0)
end
return 1
"""
)

# ARGV: prefix, queue, priority, entry. Direct hand-off: when the queue has nothing
# ready and a consumer is blocked waiting on it, lease the entry to that consumer (as
# the fetch script would) and push it onto the consumer's inbox, which its BLPOP
# watches (returns 2); otherwise queue it and leave the wake-up token (1), or queue
# it alone when nobody waits on the queue (0).
#
# The consumer that began waiting last gets it: it has just finished a task, so its
# process (and the CPU it ran on) is the one most likely still awake. Measured, 2,000
# sequential delay().get() on 2 cores, median of 5 and of 4 runs: round trip p50
# 0.28 and 0.29 ms, against 0.37 and 0.33 ms taking the longest-waiting one.
#
# No waiting set, no token: only a consumer whose fetch script registered it in
# P:w:<queue> blocks on the queue's token list, and its entry leaves that set only
# when it stops waiting (its next fetch), when a publish hands it a message, or when
# the set expires, a minute after the last registration (a wait lasts seconds). A
# publish that pops stale entries until the set is gone still leaves the token.
_SEND = Script(
    """
local P, q, p, e = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local qk, w = P .. ':q:' .. q .. ':', P .. ':w:' .. q
redis.call('SADD', P .. ':queues', q)
if redis.call('EXISTS', w) == 0 then
  redis.call('RPUSH', qk .. p, e)
  return 0
end
if redis.call('EXISTS', qk .. 0, qk .. 1, qk .. 2, qk .. 3,
    qk .. 4, qk .. 5, qk .. 6, qk .. 7, qk .. 8, qk .. 9) == 0 then
  while true do
    local got = redis.call('ZPOPMAX', w)
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
      redis.call('HSET', P .. ':lh:' .. q, r, e2)
      redis.call('ZADD', P .. ':lz:' .. q, now + lease, r)
      local inbox = P .. ':in:' .. cid
      redis.call('RPUSH', inbox, r .. '\\n' .. q .. '\\n' .. e2)
      -- Useless once the lease has run out: the entry is back in its queue by then.
      redis.call('PEXPIRE', inbox, math.floor(lease * 1000) + 60000)
      return 2
    end
  end
end
redis.call('RPUSH', qk .. p, e)
redis.call('LPUSH', P .. ':s:' .. q, 1)
redis.call('LTRIM', P .. ':s:' .. q, 0, 0)
return 1
"""
)

# Takes a consumer's inbox: deliveries handed to it while it was not listening. Each
# is kept (its lease renewed) only while its receipt still holds; one whose lease ran
# out is back in its queue already. Defines `handed`; needs P, cid, untl.
_DRAIN = """
local handed = {}
local inbox = P .. ':in:' .. cid
local items = redis.call('LRANGE', inbox, 0, -1)
if #items > 0 then
  redis.call('DEL', inbox)
  for _, it in ipairs(items) do
    local a = string.find(it, '\\n', 1, true)
    local b = string.find(it, '\\n', a + 1, true)
    local r, q = string.sub(it, 1, a - 1), string.sub(it, a + 1, b - 1)
    if redis.call('HEXISTS', P .. ':lh:' .. q, r) == 1 then
      redis.call('ZADD', P .. ':lz:' .. q, 'XX', untl, r)
      handed[#handed + 1] = it
    end
  end
end
"""

# Ends a consumer's waiting: registrations go stale, so no hand-off can reach it now.
_UNWAIT = """
local wt = P .. ':wt:' .. cid
if redis.call('DEL', wt) == 1 then
  for i = Q0, #ARGV do redis.call('ZREM', P .. ':w:' .. ARGV[i], cid) end
end
"""

# Moves ran-out leases and due delays back to the ready lists of the given queues.
_SETTLE_TIME = """
local function settle_time(P, q, now)
  local qk = P .. ':q:' .. q .. ':'
  local lz, lh = P .. ':lz:' .. q, P .. ':lh:' .. q
  local gone = redis.call('ZRANGEBYSCORE', lz, '-inf', now, 'LIMIT', 0, 1000)
  for j = #gone, 1, -1 do
    local e = redis.call('HGET', lh, gone[j])
    if e then
      redis.call('LPUSH', qk .. string.match(e, '^%d+|(%d+)|'), e)
    end
  end
  if #gone > 0 then
    redis.call('ZREM', lz, unpack(gone))
    redis.call('HDEL', lh, unpack(gone))
  end
  local dz = P .. ':d:' .. q
  local due = redis.call('ZRANGEBYSCORE', dz, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local e = string.sub(m, string.find(m, '|', 1, true) + 1)
    redis.call('RPUSH', qk .. string.match(e, '^%d+|(%d+)|'), e)
  end
  if #due > 0 then redis.call('ZREM', dz, unpack(due)) end
end
"""

# ARGV: prefix, lease seconds, limit, token, consumer id, block seconds, queues...
# Returns {"D", {handed...}, qi, receipt, entry, ...} or {"W", seconds to block}: with nothing
# due and block > 0 the consumer is registered as waiting (for a direct hand-off) for
# that long. A full batch passes the wake-up token on.
_FETCH = Script(
    _NOW
    + _SETTLE_TIME
    + """
local P, lease, limit, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local cid, block, Q0 = ARGV[5], tonumber(ARGV[6]), 7
local lmpop = (redis.REDIS_VERSION_NUM or 0) >= 0x070000  -- Redis 7; 6.2 pops list by list
local untl = now + lease
"""
    + _UNWAIT
    + _DRAIN
    + """
local out = {'D', handed}
local n = #handed
for i = Q0, #ARGV do
  local q = ARGV[i]
  settle_time(P, q, now)
  if n < limit then
    local qk = P .. ':q:' .. q .. ':'
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
        out[#out + 1] = i - Q0 + 1
        out[#out + 1] = r
        out[#out + 1] = e2
      end
    end
    if lmpop then
      -- LMPOP pops from the first non-empty list: one call per priority that has work.
      local args = {10}
      for p = 9, 0, -1 do args[#args + 1] = qk .. p end
      args[12], args[13] = 'LEFT', 'COUNT'
      while n < limit do
        args[14] = limit - n
        local got = redis.call('LMPOP', unpack(args))
        if not got then break end
        take(got[2])
      end
    else
      for p = 9, 0, -1 do
        local got = redis.call('LPOP', qk .. p, limit - n)
        if got then take(got) end
        if n >= limit then break end
      end
    end
    if #hargs > 0 then
      redis.call('HSET', P .. ':lh:' .. q, unpack(hargs))
      redis.call('ZADD', P .. ':lz:' .. q, unpack(zargs))
      if n >= limit then
        -- A full batch: more may wait. Pass the signal on to the next blocked consumer.
        redis.call('LPUSH', P .. ':s:' .. q, 1)
        redis.call('LTRIM', P .. ':s:' .. q, 0, 0)
      end
    end
  end
end
if n > 0 then return out end
local nextdue = nil
for i = Q0, #ARGV do
  local q = ARGV[i]
  for _, k in ipairs({P .. ':d:' .. q, P .. ':lz:' .. q}) do
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
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
  local wt = P .. ':wt:' .. cid
  local reg = {'t', token, 'l', ARGV[2]}
  for i = Q0, #ARGV do
    reg[#reg + 1] = 'q:' .. ARGV[i]
    reg[#reg + 1] = 1
  end
  redis.call('HSET', wt, unpack(reg))
  redis.call('PEXPIRE', wt, math.floor(wait * 1000) + 250)
  for i = Q0, #ARGV do
    local w = P .. ':w:' .. ARGV[i]
    -- A wait lasts seconds and every live waiter re-registers each time: an entry a
    -- minute old is a consumer that died waiting (publishes take the newest first,
    -- so they would not clear it).
    redis.call('ZREMRANGEBYSCORE', w, '-inf', now - 60)
    redis.call('ZADD', w, now, cid)
    redis.call('PEXPIRE', w, math.floor(wait * 1000) + 60000)
  end
end
return {'W', tostring(wait)}
"""
)

# ARGV: prefix, lease seconds, consumer id, queues... A consumer that stops waiting
# (timeout, wake()) clears its registrations and takes what was handed to it meanwhile.
_GIVE_UP = Script(
    _NOW
    + """
local P, untl, cid, Q0 = ARGV[1], now + tonumber(ARGV[2]), ARGV[3], 4
"""
    + _UNWAIT
    + _DRAIN
    + """
return handed
"""
)

# ARGV: prefix, queue, receipts...
_ACK = Script(
    """
local P, q = ARGV[1], ARGV[2]
local rs = {unpack(ARGV, 3)}
redis.call('ZREM', P .. ':lz:' .. q, unpack(rs))
redis.call('HDEL', P .. ':lh:' .. q, unpack(rs))
return 1
"""
)

# ARGV: prefix, lease seconds, then (queue, receipt) pairs.
_EXTEND = Script(
    _NOW
    + """
local P, untl = ARGV[1], now + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('ZADD', P .. ':lz:' .. ARGV[i], 'XX', untl, ARGV[i + 1])
end
return 1
"""
)

# ARGV: prefix, queue, receipt, retry_at or "".
_NACK = Script(
    _NOW
    + """
local P, q, r, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lh = P .. ':lh:' .. q
local e = redis.call('HGET', lh, r)
if not e then return 0 end
redis.call('HDEL', lh, r)
redis.call('ZREM', P .. ':lz:' .. q, r)
if at ~= '' and tonumber(at) > now then
  local s = redis.call('INCR', P .. ':seq')
  redis.call('ZADD', P .. ':d:' .. q, at, s .. '|' .. e)
else
  redis.call('LPUSH', P .. ':q:' .. q .. ':' .. string.match(e, '^%d+|(%d+)|'), e)
end
redis.call('LPUSH', P .. ':s:' .. q, 1)
redis.call('LTRIM', P .. ':s:' .. q, 0, 0)
return 1
"""
)

# ARGV: prefix, queue, receipt, priority, task id, task name, reason, failed_at, body.
_DEAD = Script(
    """
local P, q, r = ARGV[1], ARGV[2], ARGV[3]
local id = redis.call('INCR', P .. ':dlq:seq')
redis.call('HSET', P .. ':dlq:' .. id, 'q', q, 'p', ARGV[4], 't', ARGV[5], 'n', ARGV[6],
  'r', ARGV[7], 'f', ARGV[8], 'b', ARGV[9])
redis.call('ZADD', P .. ':dlq:all', id, id)
redis.call('ZADD', P .. ':dlq:q:' .. q, id, id)
redis.call('SADD', P .. ':queues', q)
redis.call('ZREM', P .. ':lz:' .. q, r)
redis.call('HDEL', P .. ':lh:' .. q, r)
return id
"""
)

# ARGV: prefix, "all" or "ids", ids... Returns how many were replayed.
_REPLAY = Script(
    """
local P = ARGV[1]
local ids
if ARGV[2] == 'all' then ids = redis.call('ZRANGE', P .. ':dlq:all', 0, -1) else ids = {unpack(ARGV, 3)} end
local count = 0
for _, id in ipairs(ids) do
  local k = P .. ':dlq:' .. id
  local f = redis.call('HMGET', k, 'q', 'p', 't', 'b')
  if f[1] then
    redis.call('RPUSH', P .. ':q:' .. f[1] .. ':' .. f[2], '0|' .. f[2] .. '|' .. f[3] .. '\\n' .. f[4])
    redis.call('SADD', P .. ':queues', f[1])
    redis.call('LPUSH', P .. ':s:' .. f[1], 1)
    redis.call('LTRIM', P .. ':s:' .. f[1], 0, 0)
    redis.call('DEL', k)
    redis.call('ZREM', P .. ':dlq:all', id)
    redis.call('ZREM', P .. ':dlq:q:' .. f[1], id)
    count = count + 1
  end
end
return count
"""
)

_PURGE_DEAD = Script(
    """
local P = ARGV[1]
local ids
if ARGV[2] == 'all' then ids = redis.call('ZRANGE', P .. ':dlq:all', 0, -1) else ids = {unpack(ARGV, 3)} end
local count = 0
for _, id in ipairs(ids) do
  local k = P .. ':dlq:' .. id
  local q = redis.call('HGET', k, 'q')
  if q then
    redis.call('DEL', k)
    redis.call('ZREM', P .. ':dlq:all', id)
    redis.call('ZREM', P .. ':dlq:q:' .. q, id)
    count = count + 1
  end
end
return count
"""
)

# ARGV: prefix, "all" or "given", queues... Returns {name, ready, in_flight, delayed, dead, ...}.
_STATS = Script(
    _NOW
    + """
local P = ARGV[1]
local queues
if ARGV[2] == 'all' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 3)} end
local out = {}
for _, q in ipairs(queues) do
  local ready = 0
  for p = 0, 9 do ready = ready + redis.call('LLEN', P .. ':q:' .. q .. ':' .. p) end
  local lz, dz = P .. ':lz:' .. q, P .. ':d:' .. q
  local leased = redis.call('ZCOUNT', lz, '(' .. now, '+inf')
  local ran_out = redis.call('ZCOUNT', lz, '-inf', now)
  local delayed = redis.call('ZCOUNT', dz, '(' .. now, '+inf')
  local due = redis.call('ZCOUNT', dz, '-inf', now)
  local dead = redis.call('ZCARD', P .. ':dlq:q:' .. q)
  ready = ready + ran_out + due
  if ARGV[2] == 'all' and ready + leased + delayed + dead == 0 then
    redis.call('SREM', P .. ':queues', q)
  else
    out[#out + 1] = q
    out[#out + 1] = ready
    out[#out + 1] = leased
    out[#out + 1] = delayed
    out[#out + 1] = dead
  end
end
return out
"""
)

# ARGV: prefix, "all" or "one", queue. Waiting, delayed and ran-out leases; not live leases.
_PURGE = Script(
    _NOW
    + """
local P = ARGV[1]
local queues
if ARGV[2] == 'all' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {ARGV[3]} end
local count = 0
for _, q in ipairs(queues) do
  for p = 0, 9 do
    local k = P .. ':q:' .. q .. ':' .. p
    count = count + redis.call('LLEN', k)
    redis.call('DEL', k)
  end
  local dz = P .. ':d:' .. q
  count = count + redis.call('ZCARD', dz)
  redis.call('DEL', dz)
  local lz, lh = P .. ':lz:' .. q, P .. ':lh:' .. q
  local gone = redis.call('ZRANGEBYSCORE', lz, '-inf', now)
  for _, r in ipairs(gone) do
    redis.call('ZREM', lz, r)
    count = count + redis.call('HDEL', lh, r)
  end
end
return count
"""
)

# GCRA with no burst. ARGV: key, interval, now or "" (Redis's clock). Returns "0" or the wait.
_RATE = Script(
    """
local k, interval = KEYS[1], tonumber(ARGV[1])
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local tat = tonumber(redis.call('GET', k))
if tat and tat > now then return tostring(math.max(tat - now, 0.000001)) end
redis.call('SET', k, string.format('%.6f', now + interval), 'PX', math.ceil(interval * 1000) + 1000)
return '0'
"""
)

_LEASE = Script(
    """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)

# Set-if-absent that answers with the holder: the new owner or the one already there.
_CLAIM = Script(
    """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
)
_RELEASE = Script(
    """
if redis.call('GET', ARGV[1]) == ARGV[2] then return redis.call('DEL', ARGV[1]) end
return 0
"""
)

# kv: KEYS = hash, expiry zset. Expired records are dropped when seen.
_KV_SET = Script(
    _NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
end
return 1
"""
)

_KV_EXPIRE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
"""

_KV_GET = Script(_NOW + _KV_EXPIRE + "return redis.call('HGET', KEYS[1], ARGV[1])")
_KV_ITEMS = Script(_NOW + _KV_EXPIRE + "return redis.call('HGETALL', KEYS[1])")
# ARGV: stream key, maxlen, entries...
_LOG_APPEND = Script(
    """
local k, maxlen = ARGV[1], ARGV[2]
for i = 3, #ARGV do redis.call('XADD', k, 'MAXLEN', '~', maxlen, '*', 'd', ARGV[i]) end
return 1
"""
)

_KV_DELETE = Script("redis.call('ZREM', KEYS[2], ARGV[1])\nreturn redis.call('HDEL', KEYS[1], ARGV[1])")


_unique_counter = itertools.count()


def _token() -> str:
    """Unique across processes, hosts and time: a per-process random tag and a counter.

    A lease receipt is ``<token>:<n>``; two fetches sharing a token would share
    receipts, so the tag is fresh in every process, and the counter needs no system
    call per fetch, unlike os.urandom.
    """
    return f"{_redis.process_tag()}.{next(_unique_counter):x}"


def _unique() -> bytes:
    return f"{_token()}|".encode()


def _priority(message: Message) -> int:
    return min(MAX_PRIORITY, max(MIN_PRIORITY, int(message.priority)))


def _entry(body: bytes, priority: int, task_id: str) -> bytes:
    if "\n" in task_id:  # the id ends the header; it is informational only
        task_id = task_id.replace("\n", " ")
    return f"0|{priority}|{task_id}\n".encode() + body


def _describe(body: bytes) -> tuple[str, str, int]:
    """Task id, name and priority for a dead letter ("" when undecodable)."""
    try:
        message = decode(body)
    except Exception:  # often the very reason it is dead-lettered
        return "", "", 0
    return message.id, message.task, _priority(message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lease_key(link: RedisLink, name: str) -> str:
    """A named lease's key (the async client's too)."""
    return link.key("lease", name)


class RedisBroker:
    """Broker and BrokerAdmin on Redis.

    Safe to share between threads and across ``fork()`` (redis-py gives a forked
    child fresh connections).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
            or
            ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``;
            options ``?prefix=NAME`` (key prefix, default ``conveyor``) and
            ``?publish_retry=SECONDS`` (how long a publish keeps retrying while Redis
            cannot be reached before it raises, default 10), plus any redis-py
            option (``socket_timeout``, ``ssl_cert_reqs``...).

    Raises:
        ConfigurationError: malformed URL, or the ``redis`` package is missing.
        BrokerConnectionError: (on use) Redis cannot be reached.
    """

    def __init__(self, url: str = "redis://localhost:6379/0", *, link: RedisLink | None = None) -> None:
        self.url = url
        self.link = link or RedisLink(url)
        self.prefix = self.link.prefix
        self._generation = 0  # bumped by wake(); a blocked fetch watching it returns
        self._instance = uuid.uuid4().hex[:12]
        self._wake_lock = threading.Lock()

    def __repr__(self) -> str:
        from conveyor._redis import mask

        return f"<RedisBroker {mask(self.url)}>"

    # -- producing -------------------------------------------------------------------
    def publish(self, message: Message, *, eta: float | None = None) -> None:
        """One round trip. A ready message goes through a small script that hands it
        straight to a consumer blocked on its queue when nothing else is ready there
        (the consumer's BLPOP returns it: no wake-up and second fetch), or queues it.
        A delayed one is plain commands: the delay set, the queue name, the token."""
        if eta is None:
            eta = message.eta
        priority = _priority(message)
        entry = _entry(message.encode(), priority, message.id)
        queue = message.queue
        prefix = self.prefix
        retry_s = self.link.parsed.publish_retry_s
        if eta is None or eta <= time.time():
            self.link.run(_SEND, (prefix, queue, priority, entry), retry_s=retry_s)
            return
        # A unique member: two identical messages must not collapse into one.
        signal = f"{prefix}:s:{queue}"
        self.link.write(
            [
                ("ZADD", f"{prefix}:d:{queue}", repr(eta), _unique() + entry),
                ("SADD", f"{prefix}:queues", queue),
                ("LPUSH", signal, 1),
                ("LTRIM", signal, 0, 0),
            ],
            retry_s=retry_s,
        )

    def publish_many(self, messages: Sequence[Message]) -> None:
        """One MULTI/EXEC of plain commands: one RPUSH per (queue, priority) list and
        one ZADD per delay set, in chunks, then the queue names and wake-up tokens."""
        if not messages:
            return
        prefix = self.prefix
        now = time.time()
        ready: dict[str, list[bytes]] = {}
        later: dict[str, list[Any]] = {}
        # Encode everything first: a message that cannot be encoded leaves none published.
        for m in messages:
            priority = _priority(m)
            entry = _entry(m.encode(), priority, m.id)
            if m.eta is not None and m.eta > now:
                later.setdefault(f"{prefix}:d:{m.queue}", []).extend((repr(m.eta), _unique() + entry))
            else:
                ready.setdefault(f"{prefix}:q:{m.queue}:{priority}", []).append(entry)
        commands: list[tuple[Any, ...]] = []
        for key, entries in ready.items():
            commands += [
                ("RPUSH", key, *entries[i : i + PUBLISH_CHUNK]) for i in range(0, len(entries), PUBLISH_CHUNK)
            ]
        for key, pairs in later.items():
            step = 2 * PUBLISH_CHUNK
            commands += [("ZADD", key, *pairs[i : i + step]) for i in range(0, len(pairs), step)]
        queues = list(dict.fromkeys(m.queue for m in messages))
        commands.append(("SADD", f"{prefix}:queues", *queues))
        for queue in queues:
            commands += [("LPUSH", f"{prefix}:s:{queue}", 1), ("LTRIM", f"{prefix}:s:{queue}", 0, 0)]
        self.link.write(commands, retry_s=self.link.parsed.publish_retry_s, atomic=True)

    def publish_raw(self, queue: str, body: bytes, *, priority: int = 0, task_id: str = "") -> None:
        """Store bytes as they are; lets tests queue a body no decoder accepts."""
        self.link.run(_PUBLISH, (self.prefix, queue, priority, "", _entry(body, priority, task_id)))

    # -- consuming -------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], *, limit: int, lease_s: float, timeout_s: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(dict.fromkeys(queues))
        deadline = time.monotonic() + max(timeout_s, 0.0)
        generation = self._generation
        consumer = self._consumer_id()
        while True:
            token = _token()
            remaining = deadline - time.monotonic()
            block = round(min(remaining, self.link.max_block_s), 3) if remaining > 0 else 0.0
            if self._generation != generation:
                block = 0.0
            args = (self.prefix, lease_s, limit, token, consumer, repr(max(block, 0.0)), *queues)
            reply = self.link.read(_FETCH, args)
            if reply[0] == b"D":
                return [_handed(item) for item in reply[1]] + _deliveries(reply, queues)
            if block <= 0:
                return []
            handed = self._block(queues, consumer, float(reply[1]))
            if handed is not None:
                return [_handed(handed)]
            if self._generation != generation or deadline - time.monotonic() <= 0:
                # Stop waiting: no hand-off may reach a consumer that is not listening.
                items = self.link.read(_GIVE_UP, (self.prefix, lease_s, consumer, *queues))
                return [_handed(item) for item in items]

    def _wake_key(self) -> str:
        # Per process (a forked child gets its own) and per broker object.
        return self.link.key("wk", f"{_redis._pid}-{self._instance}")

    def _consumer_id(self) -> str:
        # Per process, broker object and thread: names this fetcher's inbox.
        return f"{_redis._pid}-{self._instance}-{threading.get_ident()}"

    def _block(self, queues: list[str], consumer: str, seconds: float) -> bytes | None:
        """Wait for a hand-off, a publish to any of ``queues`` or a local wake(),
        without polling. Returns a delivery handed to this consumer, if that ended it.

        The fetch script registered this consumer as waiting: a publish to a queue
        with nothing ready leases the message to it and pushes it onto its inbox
        (``P:in:<consumer>``), the first key here. Other publishes (delays, bulk, a
        queue that already had work) leave one token in the queue's signal list
        (``P:s:<queue>``, never more than one); BLPOP takes it, so one publish wakes
        one blocked consumer, not all of them. A token left while nobody waited makes
        the next wait return at once: a publish between the fetch script and this
        call is never missed, at the cost of one spare fetch now and then. A consumer
        that fills its batch passes a token on, so a burst still wakes everyone.
        """
        inbox = self.link.key("in", consumer)
        keys = [inbox] + [self.link.key("s", q) for q in queues] + [self._wake_key()]
        timeout = round(max(min(seconds, self.link.max_block_s), 0.001), 3)
        reply = self.link.send([("BLPOP", *keys, timeout)])[0]
        if reply and _text(reply[0]) == inbox:
            return bytes(reply[1])
        return None

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for queue, receipts in _by_queue(deliveries).items():
            self.link.run(_ACK, (self.prefix, queue, *receipts))

    def nack(self, delivery: Delivery, *, retry_at: float | None = None, reason: str = "") -> None:
        at = "" if retry_at is None else repr(retry_at)
        self.link.run(_NACK, (self.prefix, delivery.queue, delivery.receipt, at))

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        task_id, task_name, priority = _describe(delivery.body)
        self.link.run(
            _DEAD,
            (
                self.prefix,
                delivery.queue,
                delivery.receipt,
                priority,
                task_id,
                task_name,
                reason,
                repr(time.time()),
                delivery.body,
            ),
        )

    def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> None:
        if not deliveries:
            return
        args: list[Any] = [self.prefix, lease_s]
        for d in deliveries:
            args += (d.queue, d.receipt)
        self.link.run(_EXTEND, args)

    def wake(self) -> None:
        with self._wake_lock:
            self._generation += 1
            generation = self._generation
        key = self._wake_key()
        # The fetch compares generations, so a token left over from an old wake()
        # costs one spare loop, never an early return; the key expires unused.
        self.link.send([("RPUSH", key, generation), ("PEXPIRE", key, 60_000)])

    def batch(self) -> AbstractContextManager[None]:
        """Queue this thread's writes and send them as one MULTI/EXEC at the end
        (results too, when the backend is this broker's: see ``result_backend``)."""
        return self.link.batch()

    def result_backend(self, *, result_expires_s: float) -> RedisBackend:
        """Results in this broker's Redis, on the same connections and batches."""
        from conveyor.backends.redis import RedisBackend

        return RedisBackend(self.url, result_expires_s=result_expires_s, link=self.link)

    def close(self) -> None:
        self.link.close()

    # -- admin -----------------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        mode = "all" if queues is None else "given"
        reply = self.link.read(_STATS, (self.prefix, mode, *(queues or ())))
        found = {
            _text(reply[i]): QueueStats(_text(reply[i]), *(int(v) for v in reply[i + 1 : i + 5]))
            for i in range(0, len(reply), 5)
        }
        if queues is not None:
            return [found[name] for name in queues]
        return [found[name] for name in sorted(found)]

    def purge(self, queue: str | None = None) -> int:
        mode = ("all", "") if queue is None else ("one", queue)
        return int(self.link.read(_PURGE, (self.prefix, *mode)))

    def dead_letters(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        index = self.link.key("dlq", "all") if queue is None else self.link.key("dlq", "q", queue)
        if limit <= 0:
            return []

        ids = [_text(i) for i in self.link.send([("ZREVRANGE", index, offset, offset + limit - 1)])[0]]
        if not ids:
            return []
        found = self.link.send([("HGETALL", self.link.key("dlq", i)) for i in ids])
        return [_dead_letter(i, _pairs(flat)) for i, flat in zip(ids, found, strict=True) if flat]

    def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        if not str(entry_id).isdigit():
            return None
        key = self.link.key("dlq", str(int(entry_id)))
        flat = self.link.send([("HGETALL", key)])[0]
        return _dead_letter(str(int(entry_id)), _pairs(flat)) if flat else None

    def replay_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        return self._dead_op(_REPLAY, entry_ids)

    def purge_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        return self._dead_op(_PURGE_DEAD, entry_ids)

    def _dead_op(self, script: Script, entry_ids: Sequence[str] | None) -> int:
        if entry_ids is None:
            return int(self.link.read(script, (self.prefix, "all")))
        ids = sorted({int(e) for e in entry_ids if str(e).isdigit()})
        if not ids:
            return 0
        return int(self.link.read(script, (self.prefix, "ids", *ids)))

    def rate_limit_wait(self, key: str, interval_s: float, *, now: float | None = None) -> float:
        if interval_s <= 0:
            return 0.0
        args = (repr(float(interval_s)), "" if now is None else repr(now))
        return float(self.link.read(_RATE, args, keys=(self.link.key("rl", key),)))

    def server_time(self) -> float:
        """Now by Redis's clock (``TIME``), the one its TTLs and scripts use: beat counts
        due times by it, so a stepped local clock neither sends runs early nor late."""
        seconds, micros = self.link.send([("TIME",)])[0]
        return int(seconds) + int(micros) / 1e6

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        args = (owner, max(1, int(ttl_s * 1000)))
        return bool(self.link.read(_LEASE, args, keys=(lease_key(self.link, name),)))

    def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        ttl_ms = max(1, int(ttl_s * 1000))
        holder = self.link.read(_CLAIM, (owner, ttl_ms), keys=(lease_key(self.link, name),))
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def release_lease(self, name: str, owner: str) -> None:
        self.link.run(_RELEASE, (lease_key(self.link, name), owner))

    # -- kv records --------------------------------------------------------------------
    def _kv_keys(self, namespace: str) -> tuple[str, str]:
        check_name("namespace", namespace)
        return self.link.key("kv", namespace), self.link.key("kvx", namespace)

    def kv_set(self, namespace: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        self.link.read(
            _KV_SET, (key, value, "" if ttl_s is None else repr(float(ttl_s))), keys=self._kv_keys(namespace)
        )

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        value = self.link.read(_KV_GET, (key,), keys=self._kv_keys(namespace))
        return None if value is None else bytes(value)

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        flat = self.link.read(_KV_ITEMS, (), keys=self._kv_keys(namespace))
        return {_text(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}

    def kv_delete(self, namespace: str, key: str) -> bool:
        return bool(self.link.read(_KV_DELETE, (key,), keys=self._kv_keys(namespace)))

    # -- logs --------------------------------------------------------------------------
    def _log_key(self, stream: str) -> str:
        return self.link.key("log", check_name("stream", stream))

    def log_append(self, stream: str, entries: Sequence[bytes], *, maxlen: int) -> None:
        """One XADD per entry in one script: inside a ``batch()`` it rides with the
        worker's settle (task events with the results they describe)."""
        if entries:
            self.link.run(_LOG_APPEND, (self._log_key(stream), max(1, int(maxlen)), *entries))

    def log_read(
        self, stream: str, *, after: str = "0", limit: int = 1000, timeout_s: float = 0.0
    ) -> list[tuple[str, bytes]]:
        key = self._log_key(stream)
        after = after or "0"
        if not _LOG_ID.fullmatch(after):
            raise ValueError(f"invalid log id {after!r}: pass an id returned by log_read or log_tail")
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            args: list[Any] = ["XREAD", "COUNT", max(1, limit)]
            if remaining > 0:
                args += ["BLOCK", max(1, int(min(remaining, self.link.max_block_s) * 1000))]
            args += ["STREAMS", key, after]
            reply = self.link.send([tuple(args)])[0]
            entries = _stream_entries(reply)
            if entries or deadline - time.monotonic() <= 0:
                return entries

    def log_tail(self, stream: str) -> str:
        key = self._log_key(stream)
        last = self.link.send([("XREVRANGE", key, "+", "-", "COUNT", 1)])[0]
        return _text(last[0][0]) if last else "0"

    def log_trim(self, stream: str, *, older_than_s: float) -> int:
        key = self._log_key(stream)

        cutoff_ms = int((self.server_time() - older_than_s) * 1000)
        return int(self.link.send([("XTRIM", key, "MINID", "=", max(cutoff_ms, 0))])[0])


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _by_queue(deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for d in deliveries:
        grouped.setdefault(d.queue, []).append(d.receipt)
    return grouped


def _handed(item: bytes) -> Delivery:
    """A delivery from an inbox: ``<receipt>\\n<queue>\\n<entry>``."""
    receipt, queue, entry = bytes(item).split(b"\n", 2)
    header, _, body = entry.partition(b"\n")
    attempts, _, rest = header.partition(b"|")
    return Delivery(
        body=body,
        queue=queue.decode(),
        receipt=receipt.decode(),
        attempt=int(attempts),
        message_id=rest.partition(b"|")[2].decode(errors="replace"),
    )


def _deliveries(reply: list[Any], queues: list[str]) -> list[Delivery]:
    """Popped deliveries: ``queue index, receipt, entry`` triples after the handed ones.

    The receipt comes from the script, which numbers it after the handed deliveries:
    numbered again here, the two would disagree whenever one fetch takes both.
    """
    out = []
    for i in range(2, len(reply), 3):
        header, _, body = reply[i + 2].partition(b"\n")
        attempts, _, rest = header.partition(b"|")
        task_id = rest.partition(b"|")[2]
        out.append(
            Delivery(
                body=body,
                queue=queues[reply[i] - 1],
                receipt=_text(reply[i + 1]),
                attempt=int(attempts),
                message_id=task_id.decode(errors="replace"),
            )
        )
    return out


def _stream_entries(reply: Any) -> list[tuple[str, bytes]]:
    if not reply:
        return []
    # Raw RESP2: [[key, [[id, [field, value, ...]], ...]]]
    items = reply[0][1]
    out = []
    for entry_id, fields in items:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append((_text(entry_id), bytes(values.get(b"d", b""))))
    return out


def _dead_letter(entry_id: str, fields: dict[Any, Any]) -> DeadLetter:
    return DeadLetter(
        id=entry_id,
        queue=_text(fields[b"q"]),
        body=bytes(fields[b"b"]),
        reason=_text(fields.get(b"r", b"")),
        failed_at=float(fields.get(b"f", b"0")),
        task_id=_text(fields[b"t"]) or None if fields.get(b"t") else None,
        task_name=_text(fields[b"n"]) or None if fields.get(b"n") else None,
    )
