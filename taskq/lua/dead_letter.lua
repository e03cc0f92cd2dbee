-- Sets a message aside in the partition's dead-letter stream and
-- acknowledges it, in one step.
--
-- KEYS[1]  partition stream
-- KEYS[2]  partition dead-letter stream
-- KEYS[3]  (owned partitions only) the partition's owner key of the group
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  consumer that holds it
-- ARGV[4]  most dead letters kept per partition (0: no limit)
-- ARGV[5]  (owned partitions) the owner's "member|token", else ""
-- ARGV[6..] field, value, field, value, ... of the dead-letter record
--
-- Returns the id of the record, or false when this consumer no longer
-- holds the entry (it was reclaimed, and the holder decides its fate; or
-- it was settled already), or when the caller's lease of an owned
-- partition ran out.

if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[5] then
  return false
end
if not held_by(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then
  return false
end
local record = {}
for i = 6, #ARGV do
  record[#record + 1] = ARGV[i]
end
local id
local limit = tonumber(ARGV[4])
if limit > 0 then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', limit, '*', unpack(record))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(record))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return id
