-- Adds a message to the partition's delayed set.
--
-- KEYS[1]  partition delayed set
-- ARGV[1]  due time in ms since the epoch, or -1 to use the delay
-- ARGV[2]  delay in ms, counted from the server's clock (when ARGV[1] = -1)
-- ARGV[3]  packed message
--
-- Returns the due time in ms. Relative delays use the server's clock so
-- that producers with drifting clocks agree with the workers moving them.

local due = tonumber(ARGV[1])
if due < 0 then
  due = now_ms() + tonumber(ARGV[2])
end
redis.call('ZADD', KEYS[1], due, ARGV[3])
return due
