-- Trims a partition up to the oldest entry that some consumer group still
-- needs: not yet delivered to it, or delivered and still pending. Nothing a
-- group needs is ever removed; a stream that no group reads is left alone.
--
-- KEYS[1]  partition stream
--
-- Returns the number of entries removed.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end

local function parse_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function fields(flat)
  local map = {}
  for i = 1, #flat, 2 do
    map[flat[i]] = flat[i + 1]
  end
  return map
end

local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return 0
end
local keep_ms, keep_seq
for _, flat in ipairs(groups) do
  local group = fields(flat)
  local ms, seq
  if tonumber(group['pending']) > 0 then
    local summary = redis.call('XPENDING', KEYS[1], group['name'])
    ms, seq = parse_id(summary[2])
  else
    ms, seq = parse_id(group['last-delivered-id'])
    seq = seq + 1
  end
  if keep_ms == nil or ms < keep_ms or (ms == keep_ms and seq < keep_seq) then
    keep_ms, keep_seq = ms, seq
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~',
  string.format('%.0f-%.0f', keep_ms, keep_seq))
