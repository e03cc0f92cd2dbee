-- Trims a partition up to the oldest entry that some consumer group still
-- needs (see trim_acknowledged in lib.lua).
--
-- KEYS[1]  partition stream
-- ARGV[1]  retention in ms: entries younger than that are kept too (0: none)
--
-- Returns the number of entries removed.

return trim_acknowledged(KEYS[1], ARGV[1])
