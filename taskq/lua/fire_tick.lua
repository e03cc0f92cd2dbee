-- Writes the run of a periodic job's tick to its partition, unless a run
-- of this tick or a later one was written already: however many
-- schedulers (or manual runs) try a tick, it is written once.
--
-- KEYS[1]  partition stream
-- KEYS[2]  the job's fired record in this partition (last tick written, ms)
-- ARGV[1]  tick, ms since the epoch
-- ARGV[2..] field, value, field, value, ... of the message
--
-- Returns the new entry id, or false when the tick was written before.

local fired = redis.call('GET', KEYS[2])
if fired and tonumber(fired) >= tonumber(ARGV[1]) then
  return false
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('SET', KEYS[2], ARGV[1])
return id
