-- Counts an attempt in each of KEYS, atomically, and returns the new counts.
-- ARGV[1]: the window in seconds, which starts at a counter's first count.
local counts = {}
for i = 1, #KEYS do
  counts[i] = redis.call('INCR', KEYS[i])
  if counts[i] == 1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return counts
