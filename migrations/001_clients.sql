-- API clients. Every column but the first three has a default, so that the
-- historical manual form keeps working:
--   INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES (...)
CREATE TABLE clients (
  client_id          text PRIMARY KEY
                     CHECK (length(client_id) BETWEEN 1 AND 255),
  -- bcrypt hash ($2a$, $2b$ or $2y$) of the client secret, never the secret
  client_secret_hash text NOT NULL
                     CHECK (client_secret_hash ~ '^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$'),
  -- token requests per minute; NULL means the service default (RATE_LIMIT_DEFAULT)
  rate_limit         integer CHECK (rate_limit IS NULL OR rate_limit > 0),
  name               text NOT NULL DEFAULT '',
  status             text NOT NULL DEFAULT 'enabled'
                     CHECK (status IN ('enabled', 'disabled')),
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION clients_touch_updated_at() RETURNS trigger AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER clients_updated_at
  BEFORE UPDATE ON clients
  FOR EACH ROW EXECUTE FUNCTION clients_touch_updated_at();
