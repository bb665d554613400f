-- Snippet: ends a consumer's waiting (its registration KEYS[1] and its entry in each
-- queue's waiting set): no hand-off can reach it now. Needs NQUEUES and qkeys.
if redis.call('DEL', KEYS[1]) == 1 then
  for i = 1, NQUEUES do redis.call('ZREM', qkeys(2 + (i - 1) * NQ).w, ARGV[CID]) end
end
