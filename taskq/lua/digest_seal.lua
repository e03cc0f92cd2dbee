-- Closes the window of a digest tick in one partition, one bounded step
-- at a time: moves each key's events collected before the tick into
-- batches of at most max_events, and writes one stream entry per batch
-- (with the events in it) for the digest's consumer group to run. The
-- events stay in the digest, as sealed, until their batch is done.
--
-- Call it until it reports done. Closing a tick that is closed already
-- (by another scheduler, a manual run, or again after a crash halfway)
-- writes nothing new: each step moves only events still open.
--
-- KEYS[1]  partition stream
-- KEYS[2]  digest meta (hash)
-- KEYS[3]  digest keys (sorted set: key -> oldest open collection time)
-- KEYS[4]  digest open events (sorted set, by member)
-- KEYS[5]  digest items (hash: origin -> item)
-- KEYS[6]  digest sealed events (sorted set, by member)
-- ARGV[1]  tick, ms since the epoch
-- ARGV[2]  most events in one batch
-- ARGV[3]  events to move in this call before returning (at most one
--          batch more)
-- ARGV[4]  the digest's consumer group
-- ARGV[5]  ticks missed, for the batches' `missed` field (0: none)
-- ARGV[6]  prefix of a batch payload
--
-- Returns {1 when the window is closed else 0, batches written, events
-- moved}.

local tick = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'sealed', 'sealing')
if (meta[1] and tonumber(meta[1]) >= tick) or (meta[2] and tonumber(meta[2]) > tick) then
  -- Closed already, or a later tick is being closed, which takes these
  -- events along.
  return {1, 0, 0}
end
redis.call('HSET', KEYS[2], 'sealing', ARGV[1])

local max_events = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local batches, moved = 0, 0

-- Where an event stands in its partition's stream, from its message id
-- ("topic:partition:ms-seq"): events are collected side by side, so a
-- batch is put back in the order they were published. Ids without a
-- position (a delayed send) keep their place by collection.
local function position(origin, index)
  local ms, seq = string.match(origin, ':(%d+)%-(%d+)$')
  if ms then
    return {tonumber(ms), tonumber(seq), index}
  end
  return {math.huge, 0, index}
end

local function before(a, b)
  if a[1] ~= b[1] then
    return a[1] < b[1]
  end
  if a[2] ~= b[2] then
    return a[2] < b[2]
  end
  return a[3] < b[3]
end

local function parse(item)
  local first = string.find(item, ' ', 1, true)
  local second = string.find(item, ' ', first + 1, true)
  return tonumber(string.sub(item, 1, first - 1)), string.sub(item, second + 1)
end

while moved < budget do
  local head = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1)
  if #head == 0 then
    redis.call('HSET', KEYS[2], 'sealed', ARGV[1])
    redis.call('HDEL', KEYS[2], 'sealing')
    return {1, batches, moved}
  end
  local key = head[1]
  local prefix = string.len(key) .. ':' .. key
  local low, high = '[' .. prefix, '[' .. prefix .. '\255'
  local members = redis.call('ZRANGEBYLEX', KEYS[4], low, high, 'LIMIT', 0, max_events)
  local events, origins, taken = {}, {}, {}
  for _, member in ipairs(members) do
    local origin = string.sub(member, #prefix + 17)
    local item = redis.call('HGET', KEYS[5], origin)
    if not item then
      redis.call('ZREM', KEYS[4], member)  -- nothing left to hand over
    else
      local stamp, payload = parse(item)
      if stamp >= tick then
        break
      end
      events[#events + 1] = payload
      origins[#origins + 1] = origin
      taken[#taken + 1] = member
    end
  end
  if #events > 0 then
    local order = {}
    for i, origin in ipairs(origins) do
      order[i] = position(origin, i)
    end
    table.sort(order, before)
    local published = {}
    for i, place in ipairs(order) do
      published[i] = events[place[3]]
    end
    events = published
    local batch = string.format('%012d', redis.call('HINCRBY', KEYS[2], 'batch', 1))
    for i, member in ipairs(taken) do
      redis.call('ZREM', KEYS[4], member)
      redis.call('ZADD', KEYS[6], 0, batch .. origins[i])
    end
    local payload = ARGV[6] .. '{"tick":' .. ARGV[1] .. ',"key":' .. cjson.encode(key)
      .. ',"batch":"' .. batch .. '","events":[' .. table.concat(events, ',') .. ']}'
    local fields = {'group', ARGV[4], 'key', key, 'tick', ARGV[1]}
    if tonumber(ARGV[5]) > 0 then
      fields[#fields + 1] = 'missed'
      fields[#fields + 1] = ARGV[5]
    end
    fields[#fields + 1] = 'payload'
    fields[#fields + 1] = payload
    redis.call('XADD', KEYS[1], '*', unpack(fields))
    batches = batches + 1
    moved = moved + #events
  end
  -- The key's oldest open event decides when it is looked at again.
  local rest = redis.call('ZRANGEBYLEX', KEYS[4], low, high, 'LIMIT', 0, 1)
  local item = rest[1] and redis.call('HGET', KEYS[5], string.sub(rest[1], #prefix + 17))
  if item then
    redis.call('ZADD', KEYS[3], (parse(item)), key)
  elseif rest[1] then
    redis.call('ZREM', KEYS[4], rest[1])
  else
    redis.call('ZREM', KEYS[3], key)
  end
end
return {0, batches, moved}
