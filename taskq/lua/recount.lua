-- Sets the delivery counts of entries of an owned partition, if the lease
-- is still the caller's. An owner uses it to count the next attempt of an
-- entry it retries where it is, and, after taking a partition over from an
-- owner that died, to take back the attempt charged to entries that could
-- not have started (they waited behind an earlier message of their key).
--
-- KEYS[1]  partition stream
-- KEYS[2]  the partition's owner key of the group
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the owner's)
-- ARGV[3]  the owner's "member|token"
-- ARGV[4..] entry id, delivery count, entry id, delivery count, ...
--
-- Returns 1, or -1 when the lease is not the caller's.

if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return -1
end
for i = 4, #ARGV, 2 do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
    'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
end
return 1
