-- Marks a refresh token used, once. KEYS[1]: the token's record (a hash: r
-- the sealed record, u set once used). Returns 'ok' when this call marked it,
-- 'used' when an earlier call had, 'missing' when the record is gone (revoked
-- or expired meanwhile). The rules of an exchange are judged before, in
-- TypeScript, on the record whose seal was checked there. Only commands that
-- the documented Redis ACL allows (README: Redis ACL user).
local fields = redis.call('HMGET', KEYS[1], 'r', 'u')
if not fields[1] then return 'missing' end
if fields[2] then return 'used' end
redis.call('HSET', KEYS[1], 'u', '1')
return 'ok'
