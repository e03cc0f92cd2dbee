-- Collects one event of a digest in its partition, with its collection
-- time, unless it was collected before (a copy delivered again after its
-- worker died between collecting and acknowledging it).
--
-- KEYS[1]  partition stream
-- KEYS[2]  digest meta (hash)
-- KEYS[3]  digest keys (sorted set: key -> oldest open collection time)
-- KEYS[4]  digest open events (sorted set, by member)
-- KEYS[5]  digest items (hash: origin -> item)
-- ARGV[1]  the digest's consumer group
-- ARGV[2]  entry id of the copy being handled
-- ARGV[3]  consumer handling it
-- ARGV[4]  origin: the event's message id, the same on every copy
-- ARGV[5]  the collector's clock, ms since the epoch
-- ARGV[6]  the event's digest key
-- ARGV[7]  the event (JSON)
--
-- Returns 1 when collected, 0 when it was collected before, -1 when the
-- entry is no longer this consumer's (another one took it over and
-- collects it; a worker that stalled must not add it a second time).

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending[1] == nil or pending[1][2] ~= ARGV[3] then
  return -1
end
if redis.call('HEXISTS', KEYS[5], ARGV[4]) == 1 then
  return 0
end
-- Collection times never go back within a partition (so each key's events
-- are in time order) and never fall into a window that is closed or being
-- closed: an event that arrives while tick T closes belongs to the window
-- after T.
local meta = redis.call('HMGET', KEYS[2], 'stamp', 'sealed', 'sealing')
local stamp = tonumber(ARGV[5])
for i = 1, 3 do
  if meta[i] then
    stamp = math.max(stamp, tonumber(meta[i]))
  end
end
stamp = string.format('%d', stamp)
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local key = ARGV[6]
local member = string.len(key) .. ':' .. key .. string.format('%016d', seq) .. ARGV[4]
redis.call('ZADD', KEYS[4], 0, member)
redis.call('HSET', KEYS[5], ARGV[4], stamp .. ' ' .. ARGV[2] .. ' ' .. ARGV[7])
redis.call('ZADD', KEYS[3], 'NX', stamp, key)
redis.call('HSET', KEYS[2], 'stamp', stamp)
return 1
