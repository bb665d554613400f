-- Stores result records; each ready one is also pushed once per waiter onto its
-- notify list (the waiters' BLPOP returns it), and its waiter count cleared.
-- KEYS: per record its key (P:r:<id>), waiter count (P:rw:<id>), notify list (P:rn:<id>).
-- ARGV: ttl ms ("0": none), then per record ready ("1"/"0") and the record.
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS / 3 do
  local key, waiters, notify = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local record = ARGV[2 * i + 1]
  if ttl > 0 then
    redis.call('SET', key, record, 'PX', ttl)
  else
    redis.call('SET', key, record)
  end
  if ARGV[2 * i] == '1' then
    local waiting = tonumber(redis.call('GET', waiters)) or 0
    if waiting > 0 then
      for _ = 1, waiting do redis.call('RPUSH', notify, record) end
      redis.call('PEXPIRE', notify, 60000)
      redis.call('DEL', waiters)
    end
  end
end
return 1
