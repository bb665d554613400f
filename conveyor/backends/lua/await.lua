-- wait(): looks at the record and, unless it is ready, registers as a waiter; a ready
-- one is pushed onto the notify list right here, so the BLPOP sent in the same write
-- returns it at once. Returns 1 when registered after the call.
-- KEYS: the record (P:r:<id>), its waiter count (P:rw:<id>), its notify list (P:rn:<id>).
-- ARGV: waiters' expiry ms, "1" to register (not yet registered), then the prefixes
-- a ready record starts with.
local d = redis.call('GET', KEYS[1])
if d then
  for i = 3, #ARGV do
    if string.sub(d, 1, #ARGV[i]) == ARGV[i] then
      redis.call('RPUSH', KEYS[3], d)
      redis.call('PEXPIRE', KEYS[3], 60000)
      if ARGV[2] == '0' then redis.call('DECR', KEYS[2]) end
      return 0
    end
  end
end
if ARGV[2] == '1' then redis.call('INCR', KEYS[2]) end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return 1
