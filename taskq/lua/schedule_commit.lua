-- Records a job's last tick done and releases the caller's lock, in one
-- step. The record only moves forward: a scheduler that stalled and comes
-- back with an older tick cannot set it back.
--
-- KEYS[1]  the job's last-tick record
-- KEYS[2]  the job's lock
-- ARGV[1]  tick done, ms since the epoch (-1: record nothing)
-- ARGV[2]  scheduler id (its lock is released; another's is left alone)
-- ARGV[3]  1 to release the lock, 0 to keep it
--
-- Returns the recorded last tick (ms), or false when there is none.

local tick = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if tick >= 0 and (not last or tonumber(last) < tick) then
  redis.call('SET', KEYS[1], ARGV[1])
  last = ARGV[1]
end
if ARGV[3] == '1' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return last
