-- Helpers shared by several scripts; scripts.py puts this file in front of
-- every script that calls them.

-- A packed message is a run of length-prefixed strings, "<len>:<bytes>":
-- a unique tag first, then field, value, field, value, ... (see
-- pack_message in taskq/scripts.py). Returns the fields without the tag.
local function unpack_message(packed)
  local parts = {}
  local pos = 1
  local size = #packed
  while pos <= size do
    local colon = string.find(packed, ':', pos, true)
    local len = tonumber(string.sub(packed, pos, colon - 1))
    parts[#parts + 1] = string.sub(packed, colon + 1, colon + len)
    pos = colon + len + 1
  end
  table.remove(parts, 1)
  return parts
end

-- The server's clock in milliseconds since the epoch.
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- True when the entry is pending for another consumer than `consumer`:
-- this consumer lost it (its lease ran out and another member took it).
local function held_by_other(stream, group, id, consumer)
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  return pending[1] ~= nil and pending[1][2] ~= consumer
end

-- True when the entry is pending for `consumer`. Settling steps check this
-- rather than held_by_other, so that running one again (its reply was lost
-- with the connection, and the caller sent it a second time) finds the
-- entry settled and does nothing, instead of scheduling a second copy.
local function held_by(stream, group, id, consumer)
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  return pending[1] ~= nil and pending[1][2] == consumer
end
