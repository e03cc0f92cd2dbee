-- Takes or keeps the lease of a partition for one member of a consumer
-- group: the partition's owner is the only member that reads it, so its
-- messages are handled in order. Each new lease gets a new fencing token
-- (a counter); every later step of the owner names its token, and one
-- whose lease ran out and went to another member can change nothing.
--
-- KEYS[1]  the partition's owner key of the group (string "member|token")
-- KEYS[2]  the partition's fence counter of the group
-- KEYS[3]  the partition's hand-over mark of the group
-- ARGV[1]  member
-- ARGV[2]  lease in ms
-- ARGV[3]  the token held (renew), or 0 to take a free partition
--
-- Returns {token, handed over} (handed over is 1 when the previous owner
-- gave the partition up in good order, 0 when its lease ran out), or false:
-- held by another member, or (renewing) the lease was lost.

local current = redis.call('GET', KEYS[1])
if ARGV[3] ~= '0' then
  if current == ARGV[1] .. '|' .. ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {tonumber(ARGV[3]), 0}
  end
  return false
end
if current then
  return false
end
local token = redis.call('INCR', KEYS[2])
-- The counter outlives every lease by far; it expires only after a month
-- without any owner, when no stale owner can be left to fence out.
redis.call('PEXPIRE', KEYS[2], 2592000000)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return {token, redis.call('DEL', KEYS[3])}
