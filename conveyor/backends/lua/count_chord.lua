-- Counts a chord member once. Returns 1 only to the call that added the size-th
-- member: SADD and SCARD in one script, so two workers counting the last two
-- members cannot both see "complete".
-- KEYS: the chord's set of counted members (P:chord:<chord id>).
-- ARGV: member task id, chord size, ttl ms ("0": none).
local ttl = tonumber(ARGV[3])
local added = redis.call('SADD', KEYS[1], ARGV[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
if added == 1 and redis.call('SCARD', KEYS[1]) == tonumber(ARGV[2]) then return 1 end
return 0
