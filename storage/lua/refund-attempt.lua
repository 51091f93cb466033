-- Takes one count back from KEYS[1] if it still exists (an expired counter
-- is not brought back as a negative one without an expiry).
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then redis.call('DECR', KEYS[1]) end
return 0
