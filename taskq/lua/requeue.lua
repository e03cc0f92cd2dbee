-- Hands entries a stopping consumer holds back to its group at once: each
-- is appended again as a new entry (with the attempt count the worker
-- chose) and the old one acknowledged, in one step. A member blocked in
-- XREADGROUP receives the new entry at once, instead of waiting for the
-- lease of the old one to run out.
--
-- KEYS[1]  partition stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
-- ARGV[3..] entry id, packed message, entry id, packed message, ...
--
-- Returns the number of entries handed back; an entry this consumer no
-- longer holds (another took it over, or it was settled) is left alone.

local count = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if held_by(KEYS[1], ARGV[1], id, ARGV[2]) then
    redis.call('XADD', KEYS[1], '*', unpack(unpack_message(ARGV[i + 1])))
    redis.call('XACK', KEYS[1], ARGV[1], id)
    count = count + 1
  end
end
return count
