-- Renews the lease of entries a consumer is working on: resets their idle
-- time so no other member claims them, without counting a delivery.
--
-- KEYS[1]  partition stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
-- ARGV[3..] entry ids, in ascending order
--
-- Entries another consumer holds now are left alone (this consumer lost
-- them while it stalled); their ids are returned so the worker knows.
-- Entries no consumer holds (the group was recreated, the entry was
-- acknowledged since the worker listed them, its settler running
-- alongside) are neither renewed nor reported: acknowledging them later
-- finds out and says so.

local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[#ARGV],
  #ARGV - 2, ARGV[2])
local mine = {}
for _, entry in ipairs(held) do
  mine[entry[1]] = true
end
local claim = {KEYS[1], ARGV[1], ARGV[2], 0}
local lost = {}
for i = 3, #ARGV do
  if mine[ARGV[i]] then
    claim[#claim + 1] = ARGV[i]
  elseif held_by_other(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    lost[#lost + 1] = ARGV[i]
  end
end
if #claim > 4 then
  claim[#claim + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(claim))
end
return lost
