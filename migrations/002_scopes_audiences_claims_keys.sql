-- Per-client scopes, audiences, custom claims, and keys for private_key_jwt
-- (RFC 7523). Every new column has a default, so the historical
--   INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES (...)
-- still works and gives a client with no scopes and the service's audience.

-- Scopes the client may ask for, and those granted when it asks for none.
ALTER TABLE clients
  ADD COLUMN scopes text[] NOT NULL DEFAULT '{}',
  ADD COLUMN default_scopes text[] NOT NULL DEFAULT '{}',
  ADD CONSTRAINT clients_default_scopes_allowed CHECK (default_scopes <@ scopes);

-- Audiences the client may ask for besides JWT_AUDIENCE (always allowed).
ALTER TABLE clients
  ADD COLUMN audiences text[] NOT NULL DEFAULT '{}';

-- Claims added to every access token of the client; registered claims
-- (iss, sub, aud, exp, iat, jti, client_id, scope, sid, ...) are never overridden.
ALTER TABLE clients
  ADD COLUMN claims jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT clients_claims_object CHECK (jsonb_typeof(claims) = 'object');

-- private_key_jwt: the client's public keys, by URL or inline (a JWK Set).
-- A client authenticates with a secret, with keys, or both; never with nothing.
ALTER TABLE clients
  ADD COLUMN jwks_uri text CHECK (jwks_uri IS NULL OR jwks_uri ~ '^https?://'),
  ADD COLUMN jwks jsonb CHECK (jwks IS NULL OR jsonb_typeof(jwks -> 'keys') = 'array'),
  ALTER COLUMN client_secret_hash DROP NOT NULL,
  ADD CONSTRAINT clients_have_credentials
    CHECK (client_secret_hash IS NOT NULL OR jwks_uri IS NOT NULL OR jwks IS NOT NULL);
