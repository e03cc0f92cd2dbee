-- Removes the events of a finished digest batch (it succeeded, or it was
-- dead-lettered with its events in the record): the end of their time in
-- the digest. An event whose collecting copy is still pending (its worker
-- died after collecting it and before acknowledging it) is acknowledged
-- here, so it cannot be collected a second time.
--
-- KEYS[1]  partition stream
-- KEYS[2]  digest items (hash: origin -> item)
-- KEYS[3]  digest sealed events (sorted set, by member)
-- ARGV[1]  the digest's consumer group
-- ARGV[2]  batch id, 12 digits
--
-- Returns the number of events removed; 0 when the batch was done before.

local members = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. ARGV[2], '[' .. ARGV[2] .. '\255')
for _, member in ipairs(members) do
  local origin = string.sub(member, 13)
  local item = redis.call('HGET', KEYS[2], origin)
  if item then
    local first = string.find(item, ' ', 1, true)
    local second = string.find(item, ' ', first + 1, true)
    local entry = string.sub(item, first + 1, second - 1)
    if redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)[1] ~= nil then
      redis.call('XACK', KEYS[1], ARGV[1], entry)
    end
    redis.call('HDEL', KEYS[2], origin)
  end
  redis.call('ZREM', KEYS[3], member)
end
return #members
