-- Records that an entry of an owned partition will be tried again where it
-- is (so later messages of its key keep waiting behind it): its delivery
-- count becomes the number of the next attempt, so a new owner taking it
-- over after a crash counts on from there.
--
-- KEYS[1]  partition stream
-- KEYS[2]  the partition's owner key of the group
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
-- ARGV[3]  the owner's "member|token"
-- ARGV[4]  entry id
-- ARGV[5]  the number of the next attempt
--
-- Returns 1, or -1 when the lease is not the caller's.

if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return -1
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[4],
  'RETRYCOUNT', ARGV[5], 'JUSTID')
return 1
