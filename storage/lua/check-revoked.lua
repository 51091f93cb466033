-- Whether an access token or its session is revoked, in one round trip.
-- KEYS: the restore marker, then the deny-list and session keys. Returns -1
-- when the marker is missing (Redis lost its data and the revocations have
-- not been put back yet), else how many of the other keys exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local found = 0
for i = 2, #KEYS do found = found + redis.call('EXISTS', KEYS[i]) end
return found
