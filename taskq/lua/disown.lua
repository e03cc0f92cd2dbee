-- Gives up the lease of a partition, first setting the delivery counts of
-- the entries the owner still holds, so the next owner, which takes them
-- over (and so counts one more delivery), sees the right attempt numbers:
-- an entry that never started is not charged an attempt.
--
-- KEYS[1]  partition stream
-- KEYS[2]  the partition's owner key of the group
-- KEYS[3]  the partition's hand-over mark of the group
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the owner's)
-- ARGV[3]  the owner's "member|token"
-- ARGV[4..] entry id, delivery count, entry id, delivery count, ...
--
-- Returns 1, or 0 when the lease was not this owner's any more (nothing is
-- changed then).

if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
for i = 4, #ARGV, 2 do
  if not held_by_other(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
      'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
  end
end
redis.call('DEL', KEYS[2])
-- Tells the next owner that these counts are exact (see own.lua).
redis.call('SET', KEYS[3], ARGV[2], 'PX', 600000)
return 1
