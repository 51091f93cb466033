-- Token exchange (RFC 8693): the clients whose access tokens this client may
-- present as subject_token. Its own tokens it may always exchange, so the
-- default (none listed) keeps every existing client, and the historical
--   INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES (...)
-- to exactly that.
ALTER TABLE clients
  ADD COLUMN may_exchange text[] NOT NULL DEFAULT '{}';
