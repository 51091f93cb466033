// The ConfigError a configuration load throws; anything else, or no error at
// all, fails the calling test.
import { ConfigError, loadConfig } from '../../plugins/config.ts'

export function configError (env: Record<string, string>, load: (env: Record<string, string>) => unknown = loadConfig): ConfigError {
  try {
    load(env)
  } catch (err) {
    if (err instanceof ConfigError) return err
    throw err
  }
  throw new Error('loadConfig accepted the environment')
}
