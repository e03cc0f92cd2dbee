-- Takes or renews the lock of a periodic job or digest: the scheduler that
-- holds it is the one handling the job's due ticks. The lock expires, so
-- a scheduler that stopped or stalled is replaced by another.
--
-- KEYS[1]  the job's lock
-- ARGV[1]  scheduler id
-- ARGV[2]  how long the lock lasts unless renewed, ms
--
-- Returns 1 when the caller holds the lock now, 0 when another does.

local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
