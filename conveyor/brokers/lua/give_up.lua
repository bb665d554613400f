-- A consumer that stops waiting (timeout, wake()) clears its registrations and takes
-- what was handed to it meanwhile. Returns the handed deliveries.
--
-- KEYS: as fetch.lua (registration, inbox, then each queue's keys).
-- ARGV: prefix, lease seconds, consumer id, queues...
--#now
--#queue_keys
local P, untl, CID, Q0 = ARGV[1], now + tonumber(ARGV[2]), 3, 4
local NQUEUES = #ARGV - Q0 + 1
--#unwait
--#drain
return handed
