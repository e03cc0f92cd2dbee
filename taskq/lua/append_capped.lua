-- Appends a message to a partition unless the partition is full.
--
-- KEYS[1]  partition stream
-- ARGV[1]  max_len: most entries the partition may hold
-- ARGV[2..] field, value, field, value, ...
--
-- Returns the new entry id, or false when the partition holds max_len
-- entries already (the producer raises QueueFull; nothing is dropped).

if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return redis.call('XADD', KEYS[1], '*', unpack(fields))
