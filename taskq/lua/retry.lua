-- Schedules another attempt of a message and acknowledges the current copy,
-- in one step: a crash between the two can neither lose the message nor
-- leave it both pending and scheduled.
--
-- KEYS[1]  partition stream
-- KEYS[2]  partition delayed set
-- ARGV[1]  consumer group
-- ARGV[2]  entry id of the current copy
-- ARGV[3]  consumer that holds it
-- ARGV[4]  delay in ms, counted from the server's clock
-- ARGV[5]  packed message of the next attempt
--
-- Returns the due time in ms, or false when this consumer no longer holds
-- the entry: another took it over (this one lost its lease; the holder
-- decides what happens), or it was settled already.

if not held_by(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then
  return false
end
local due = now_ms() + tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], due, ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return due
