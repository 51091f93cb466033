-- The grant types each client may use (RFC 6749 §5.2 unauthorized_client for
-- any other). The default keeps every existing client, and the historical
--   INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES (...)
-- able to use both grants the service supports.
ALTER TABLE clients
  ADD COLUMN grant_types text[] NOT NULL DEFAULT '{client_credentials,refresh_token}';
