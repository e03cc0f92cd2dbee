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

-- Like unpack_message, but never raises: returns the fields, or nil and
-- why `packed` is not a message taskq could have written (a member added
-- by another tool, or damaged). At most `max_values` fields and values are
-- accepted, so that unpack() on them stays within Lua's stack.
local function parse_message(packed, max_values)
  local parts = {}
  local pos = 1
  local size = #packed
  while pos <= size do
    local colon = string.find(packed, ':', pos, true)
    local digits = colon and string.sub(packed, pos, colon - 1)
    if not digits or not string.match(digits, '^%d+$') then
      return nil, 'part ' .. (#parts + 1) .. ' has no "<length>:" prefix'
    end
    local len = tonumber(digits)
    if colon + len > size then
      return nil, 'part ' .. (#parts + 1) .. ' runs past the end of the member'
    end
    if #parts > max_values then
      return nil, 'it has more than ' .. max_values .. ' fields and values'
    end
    parts[#parts + 1] = string.sub(packed, colon + 1, colon + len)
    pos = colon + len + 1
  end
  table.remove(parts, 1)
  if #parts == 0 then
    return nil, 'it has no fields'
  end
  if #parts % 2 == 1 then
    return nil, 'it has an odd number of fields and values (' .. #parts .. ')'
  end
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

-- Removes the entries of a stream that every consumer group is done with:
-- delivered to it and acknowledged. Nothing a group still needs (not yet
-- delivered, or pending) is removed; a stream no group reads is left alone.
-- With `retention_ms` > 0, entries younger than that (by the server's
-- clock) are kept too. Returns the number removed.
local function trim_acknowledged(stream, retention_ms)
  if redis.call('EXISTS', stream) == 0 then
    return 0
  end
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then
    return 0
  end
  -- The oldest entry to keep, as (ms, seq).
  local min_ms, min_seq
  for _, flat in ipairs(groups) do
    local group = {}
    for i = 1, #flat, 2 do
      group[flat[i]] = flat[i + 1]
    end
    local id
    local bump = 0
    if tonumber(group['pending']) > 0 then
      id = redis.call('XPENDING', stream, group['name'])[2]
    else
      id = group['last-delivered-id']
      bump = 1
    end
    local dash = string.find(id, '-', 1, true)
    local ms = tonumber(string.sub(id, 1, dash - 1))
    local seq = tonumber(string.sub(id, dash + 1)) + bump
    if min_ms == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
      min_ms, min_seq = ms, seq
    end
  end
  if tonumber(retention_ms) > 0 then
    local now = redis.call('TIME')
    local horizon = tonumber(now[1]) * 1000 - tonumber(retention_ms)
    if horizon < min_ms then
      min_ms, min_seq = horizon, 0
    end
  end
  return redis.call('XTRIM', stream, 'MINID', string.format('%.0f-%.0f', min_ms, min_seq))
end

-- True when the entry is pending for `consumer`. Settling steps check this
-- rather than held_by_other, so that running one again (its reply was lost
-- with the connection, and the caller sent it a second time) finds the
-- entry settled and does nothing, instead of scheduling a second copy.
local function held_by(stream, group, id, consumer)
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  return pending[1] ~= nil and pending[1][2] == consumer
end
