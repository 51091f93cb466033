-- Marks a refresh token used, once. KEYS[1]: the token's record (a hash: r
-- the sealed record, u set once used). Returns 'ok' when this call marked it,
-- 'used' when an earlier call had, 'missing' when the record is gone (revoked
-- or expired meanwhile). The rules of an exchange are judged before, in
-- TypeScript, on the record whose seal was checked there.
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then return 'missing' end
if redis.call('HSETNX', KEYS[1], 'u', '1') == 0 then return 'used' end
return 'ok'
