-- What Redis keeps when REDIS_URL is set, for deployments without Redis (the
-- embedded mode, or one instance on a PostgreSQL server). Every row carries
-- its expiry: reads ignore expired rows and the service deletes them.

-- Refresh tokens, under the SHA-256 of the token (never the token itself).
CREATE TABLE refresh_tokens (
  token_hash text PRIMARY KEY,
  client_id  text NOT NULL,
  sid        text NOT NULL,
  -- client_id, sid, scope, aud, iat, exp: as the Redis record
  record     jsonb NOT NULL,
  -- exchanged once; presenting it again revokes the session
  used       boolean NOT NULL DEFAULT false,
  expires_at timestamptz NOT NULL
);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

-- Revoked access tokens (by jti) and sessions (by sid), until the last token
-- they cover has expired.
CREATE TABLE revocations (
  kind       text NOT NULL CHECK (kind IN ('access_token', 'session')),
  id         text NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_expires_at ON revocations (expires_at);

-- private_key_jwt assertions already presented (RFC 7523 §3: single use).
CREATE TABLE used_client_assertions (
  key        text PRIMARY KEY,
  expires_at timestamptz NOT NULL
);
CREATE INDEX used_client_assertions_expires_at ON used_client_assertions (expires_at);
