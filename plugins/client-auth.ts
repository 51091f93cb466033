// Client authentication lives in client-auth/ (one module per method); this
// file only lets the plugin autoloader register its entry point.
export { default } from '../client-auth/index.ts'
