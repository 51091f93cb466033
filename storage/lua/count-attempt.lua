-- Counts an attempt in KEYS[1], atomically, and returns the new count.
-- ARGV[1]: the window in seconds, which starts at the counter's first count.
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
