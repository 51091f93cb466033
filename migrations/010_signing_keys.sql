-- Signing keys the service keeps itself (KEY_STORE=database). The private
-- part is sealed with AES-256-GCM under the key-encryption key, which is a
-- setting and never stored here: private_key holds version (1 byte) | IV
-- (12) | tag (16) | ciphertext of the PKCS#8 DER, authenticated together
-- with the kid, so a sealed key moved to another row does not open.
--
-- A key is 'next' (published, not signing), 'current' (signing; exactly one)
-- or 'retired' (published until remove_after, when the last token it signed
-- has expired; then the row is deleted). Times are those of the instance
-- that made the change, not of this server.
CREATE TABLE signing_keys (
  kid            text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{43}$'),
  algorithm      text NOT NULL CHECK (algorithm IN ('RS256', 'ES256', 'EdDSA')),
  public_jwk     jsonb NOT NULL,
  private_key    bytea NOT NULL CHECK (length(private_key) > 29),
  state          text NOT NULL CHECK (state IN ('next', 'current', 'retired')),
  created_at     timestamptz NOT NULL,
  -- next: the earliest time it may sign (never before created_at + KEY_PUBLISH_AHEAD)
  activate_after timestamptz,
  activated_at   timestamptz,
  retired_at     timestamptz,
  remove_after   timestamptz,
  CHECK ((state = 'next') = (activate_after IS NOT NULL)),
  CHECK ((state = 'retired') = (retired_at IS NOT NULL AND remove_after IS NOT NULL))
);

-- One signing key and at most one waiting key, whatever two writers do.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'next';

-- Who changed which key, when: one row per step, written in the transaction
-- of the step. Never a private part. No foreign key: the history of a
-- removed key outlives it.
CREATE TABLE signing_key_events (
  id      bigserial PRIMARY KEY,
  kid     text NOT NULL,
  action  text NOT NULL CHECK (action IN ('created', 'imported', 'activated', 'retired', 'removed', 'rescheduled', 'rewrapped')),
  actor   text NOT NULL CHECK (length(actor) BETWEEN 1 AND 255),
  at      timestamptz NOT NULL,
  details jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX signing_key_events_newest_first ON signing_key_events (id DESC);
