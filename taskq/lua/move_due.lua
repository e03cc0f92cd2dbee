-- Moves messages whose time has come from the delayed set onto the stream,
-- each in the same step as its removal, so whichever worker runs this, a
-- message is moved once.
--
-- A member that is not a message (written by another tool, or damaged) is
-- set aside in the partition's dead-letter stream instead, with its bytes
-- as they were, so that it cannot hold up the members due after it.
--
-- KEYS[1]  partition delayed set
-- KEYS[2]  partition stream
-- KEYS[3]  partition dead-letter stream
-- ARGV[1]  most messages to move in this call
-- ARGV[2]  most dead letters kept per partition (0: no limit)
-- ARGV[3]  topic (for the dead-letter record)
-- ARGV[4]  partition (for the dead-letter record)
--
-- Returns {members handled, ms until the next one is due or -1 when none
-- is left, members set aside}.

-- Most fields and values of one message: far more than taskq writes, and
-- well within what unpack() can pass to XADD.
local MAX_VALUES = 2000

-- A stream key of the wrong type fails here, before anything is touched:
-- that is the stream's fault, not the members'.
redis.call('XLEN', KEYS[2])

local function set_aside(packed, why, now)
  local record = {
    'reason', 'invalid_envelope',
    'error', 'delayed message ' .. why,
    'topic', ARGV[3],
    'partition', ARGV[4],
    'source_id', '',
    'attempts', '0',
    'dead_at', tostring(now),
    'delayed_member', packed,
  }
  local limit = tonumber(ARGV[2])
  if limit > 0 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', limit, '*', unpack(record))
  else
    redis.call('XADD', KEYS[3], '*', unpack(record))
  end
end

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now,
  'LIMIT', 0, tonumber(ARGV[1]))
local set_aside_count = 0
for _, packed in ipairs(due) do
  local fields, why = parse_message(packed, MAX_VALUES)
  if fields then
    local added = redis.pcall('XADD', KEYS[2], '*', unpack(fields))
    if type(added) == 'table' and added['err'] then
      fields, why = nil, 'was refused by XADD: ' .. added['err']
    end
  else
    why = 'is malformed: ' .. why
  end
  if not fields then
    set_aside(packed, why, now)
    set_aside_count = set_aside_count + 1
  end
  redis.call('ZREM', KEYS[1], packed)
end

local next_due = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  next_due = math.max(0, tonumber(head[2]) - now)
end
return {#due, next_due, set_aside_count}
