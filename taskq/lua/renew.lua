-- Renews the lease of entries a consumer is working on: resets their idle
-- time so no other member claims them, without counting a delivery.
--
-- KEYS[1]  partition stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
-- ARGV[3..] entry ids, in ascending order
--
-- Returns {lost, gone}, two lists of ids:
--   lost  entries another consumer holds now: this consumer lost them
--         while it stalled, and must not run or settle them;
--   gone  entries no consumer holds: acknowledged since the worker listed
--         them (its settler runs alongside), or settled by the consumer
--         that took them over, or the group was recreated. The worker runs
--         none of these that it has not started yet.

local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[#ARGV],
  #ARGV - 2, ARGV[2])
local mine = {}
for _, entry in ipairs(held) do
  mine[entry[1]] = true
end
local claim = {KEYS[1], ARGV[1], ARGV[2], 0}
local lost = {}
local gone = {}
for i = 3, #ARGV do
  if mine[ARGV[i]] then
    claim[#claim + 1] = ARGV[i]
  else
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
    if pending[1] == nil then
      gone[#gone + 1] = ARGV[i]
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
if #claim > 4 then
  claim[#claim + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(claim))
end
return {lost, gone}
