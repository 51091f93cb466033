-- Takes one count back from each of KEYS that still exists (an expired
-- counter is not brought back as a negative one without an expiry).
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 and tonumber(redis.call('GET', KEYS[i])) > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
