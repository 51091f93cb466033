-- DPoP (RFC 9449). A client may be required to bind its access tokens to a
-- key it holds (dpop_bound_access_tokens, RFC 9449 §5.2); the default keeps
-- every existing client and the historical three-column INSERT working.
ALTER TABLE clients ADD COLUMN dpop_bound_access_tokens boolean NOT NULL DEFAULT false;

-- The RFC 7638 thumbprint of the key a session is bound to; NULL for a
-- session of bearer tokens. The record carries it too: the column lets an
-- operator see which sessions are bound.
ALTER TABLE refresh_tokens ADD COLUMN jkt text;

-- The key of the server nonces (RFC 9449 §8): every instance makes and
-- accepts the same nonces without keeping any, and Redis never holds it.
INSERT INTO service_secrets (name, secret)
VALUES ('dpop-nonces', sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));
