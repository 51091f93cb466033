// Shared by every entry point that builds a logger (server.ts, lambda.ts). It
// lives outside plugins/ because everything there is autoloaded as a plugin.

// Pino paths that must never reach a log line, whatever a serializer adds.
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.body',
  'body.client_secret',
  'body.refresh_token',
  'body.token',
  'client_secret',
  'refresh_token',
  'access_token'
]
