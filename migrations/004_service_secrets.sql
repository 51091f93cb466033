-- Secrets the instances of one deployment share and that Redis never holds.
-- 'redis-records' authenticates what the service caches in Redis (client
-- records, refresh-token records): anyone who can write to Redis but not to
-- this database cannot forge such a record. Made once, here, from
-- PostgreSQL's strong random source (three version-4 UUIDs, 366 random
-- bits, hashed to 256).
CREATE TABLE service_secrets (
  name       text PRIMARY KEY,
  secret     bytea NOT NULL CHECK (length(secret) >= 32),
  created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO service_secrets (name, secret)
VALUES ('redis-records', sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));
