-- Takes over entries that other members of the group have held for longer
-- than the lease (their worker died or stalled), and reports how often each
-- has been delivered, so the worker can set aside a message that keeps
-- killing the workers that take it instead of running it again.
--
-- KEYS[1]  partition stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer taking the entries over
-- ARGV[3]  lease in ms: the idle time after which an entry is taken
-- ARGV[4]  cursor (an entry id; 0-0 to start)
-- ARGV[5]  most entries to take
--
-- Returns {next cursor, {{id, fields, deliveries, idle ms before}, ...},
-- deleted ids, ms until the next entry another consumer holds runs out
-- its lease (of the oldest pending entries; -1 if none)}. Deleted ids name
-- entries that were trimmed or deleted while pending; XAUTOCLAIM has
-- already removed them from the pending list.

-- How long each candidate had been idle, i.e. when its last holder got it:
-- the closest thing to the start of an attempt that died with its worker.
local idle = {}
local candidates = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3],
  ARGV[4], '+', tonumber(ARGV[5]))
for _, entry in ipairs(candidates) do
  idle[entry[1]] = entry[3]
end

local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3],
  ARGV[4], 'COUNT', tonumber(ARGV[5]))
local result = {}
for _, entry in ipairs(claimed[2]) do
  -- Redis 6.2 reports a deleted entry as nil here; 7.0 lists it apart.
  if entry then
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    local deliveries = 1
    if info[1] then
      deliveries = info[1][4]
    end
    result[#result + 1] = {entry[1], entry[2], deliveries, idle[entry[1]] or 0}
  end
end
-- When to look again: as soon as the next entry of another consumer has
-- gone without renewal for a whole lease, not a reclaim period later.
local soonest = -1
local lease = tonumber(ARGV[3])
for _, entry in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100)) do
  if entry[2] ~= ARGV[2] then
    local left = math.max(0, lease - entry[3])
    if soonest < 0 or left < soonest then
      soonest = left
    end
  end
end
return {claimed[1], result, claimed[3] or {}, soonest}
