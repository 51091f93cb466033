-- When each revocation was recorded (or last extended): instances that keep
-- the revocations in memory read the recent ones every few seconds, so a
-- revocation whose notice they missed reaches them all the same. Rows of
-- earlier releases take the time of this migration, and are read at start.
ALTER TABLE revocations ADD COLUMN revoked_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX revocations_revoked_at ON revocations (revoked_at);
