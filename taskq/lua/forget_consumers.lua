-- Removes the consumers of a group that hold nothing and have not been
-- seen for a while (workers that stopped), so the consumer list does not
-- grow with every restart. A consumer that holds entries is never removed:
-- that would drop its entries from the pending list.
--
-- KEYS[1]  partition stream
-- ARGV[1]  consumer group
-- ARGV[2]  idle time, in ms, after which an empty consumer is removed
--
-- Returns the number of consumers removed.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers['err'] then
  return 0
end
local removed = 0
for _, flat in ipairs(consumers) do
  local consumer = {}
  for i = 1, #flat, 2 do
    consumer[flat[i]] = flat[i + 1]
  end
  if tonumber(consumer['pending']) == 0
      and tonumber(consumer['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    removed = removed + 1
  end
end
return removed
