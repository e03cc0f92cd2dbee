-- Moves messages whose time has come from the delayed set onto the stream,
-- each in the same step as its removal, so whichever worker runs this, a
-- message is moved once.
--
-- KEYS[1]  partition delayed set
-- KEYS[2]  partition stream
-- ARGV[1]  most messages to move in this call
--
-- Returns {moved, ms until the next one is due or -1 when none is left}.

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now,
  'LIMIT', 0, tonumber(ARGV[1]))
for _, packed in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(unpack_message(packed)))
  redis.call('ZREM', KEYS[1], packed)
end

local next_due = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  next_due = math.max(0, tonumber(head[2]) - now)
end
return {#due, next_due}
