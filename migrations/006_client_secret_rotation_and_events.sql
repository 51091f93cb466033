-- Secret rotation with overlap: after a rotation with a grace period, the
-- previous secret's hash stays valid until previous_secret_expires_at, so
-- that a client's deployments can move to the new secret without downtime.
-- Both columns are NULL outside a grace period; the historical
--   INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES (...)
-- keeps working (both default to NULL).
ALTER TABLE clients
  ADD COLUMN previous_secret_hash text
    CHECK (previous_secret_hash IS NULL OR previous_secret_hash ~ '^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$'),
  ADD COLUMN previous_secret_expires_at timestamptz,
  ADD CONSTRAINT clients_previous_secret_expires
    CHECK ((previous_secret_hash IS NULL) = (previous_secret_expires_at IS NULL));

-- Who changed which client, when, and how: one row per change, written in the
-- same statement as the change. No foreign key: the history of a deleted
-- client outlives it. before and after hold the client's settings, never a
-- secret or a hash (a rotation records only that it happened and when the
-- previous secret stops working).
CREATE TABLE client_events (
  id        bigserial PRIMARY KEY,
  client_id text NOT NULL,
  action    text NOT NULL
            CHECK (action IN ('created', 'updated', 'secret_rotated', 'enabled', 'disabled', 'deleted')),
  actor     text NOT NULL CHECK (length(actor) BETWEEN 1 AND 255),
  at        timestamptz NOT NULL DEFAULT now(),
  before    jsonb,
  after     jsonb
);

-- The events of a client, newest first (pages go by id).
CREATE INDEX client_events_client_newest_first ON client_events (client_id, id DESC);
