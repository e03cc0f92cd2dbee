-- Acknowledges entries of an owned partition, if the lease is still the
-- caller's: an owner that stalled past its lease, and whose partition went
-- to another member, acknowledges nothing.
--
-- KEYS[1]  partition stream
-- KEYS[2]  the partition's owner key of the group
-- ARGV[1]  consumer group
-- ARGV[2]  the owner's "member|token"
-- ARGV[3..] entry ids
--
-- Returns the number acknowledged, or -1 when the lease is not the
-- caller's.

if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
