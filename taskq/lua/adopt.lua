-- Takes over the entries of an owned partition that another consumer of
-- the group holds: a worker that stalled past its lease may have had new
-- entries delivered to it (by a blocking read it had sent before) after
-- the partition went to this owner. It drops them, as it no longer owns
-- the partition; without this step they would wait for the next hand-over.
--
-- KEYS[1]  partition stream
-- KEYS[2]  the partition's owner key of the group
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the owner's)
-- ARGV[3]  the owner's "member|token"
-- ARGV[4]  most entries to take
--
-- Returns {{id, fields, deliveries}, ...} (entries deleted meanwhile are
-- dropped from the pending list, not returned), or -1 when the lease is
-- not the caller's.

if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return -1
end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local taken = {}
if summary[1] == 0 or not summary[4] then
  return taken
end
local room = tonumber(ARGV[4])
for _, holder in ipairs(summary[4]) do
  if holder[1] ~= ARGV[2] and room > 0 then
    local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', room, holder[1])
    for _, info in ipairs(held) do
      -- The count stays as it is: the stalled member did not start these
      -- (it holds back what it has not started until its leases are
      -- confirmed, and finds them lost then).
      local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, info[1],
        'RETRYCOUNT', info[4])
      if claimed[1] then
        taken[#taken + 1] = {claimed[1][1], claimed[1][2], info[4]}
      end
      room = room - 1
    end
  end
end
return taken
