-- Appends a message to a partition unless the partition is full: it holds
-- max_len entries that some consumer group still needs. Entries every
-- group is done with are trimmed first, so only the real backlog counts.
--
-- KEYS[1]  partition stream
-- ARGV[1]  max_len
-- ARGV[2..] field, value, field, value, ...
--
-- Returns the new entry id, or false when the partition is full (the
-- producer raises QueueFull or waits; nothing is dropped).

local max_len = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) >= max_len then
  -- (Retention gives way here: a full partition keeps only what is needed.)
  trim_acknowledged(KEYS[1], 0)
  if redis.call('XLEN', KEYS[1]) >= max_len then
    return false
  end
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return redis.call('XADD', KEYS[1], '*', unpack(fields))
