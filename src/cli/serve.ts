/**
 * `hookbot serve`: every option comes from the server's option table, so
 * `serve --help`, the HOOKBOT_* variables and validation agree.
 */
import type { Command } from 'commander';
import { resolveServeConfig, SERVE_OPTIONS } from '../server/config.js';
import type { OptionSpec } from '../server/options.js';
import { createLogger } from '../server/log.js';
import { startServer } from '../server/server.js';
import { commanderOption, typedOptions } from './options.js';

/** Whatever happens on SIGTERM/SIGINT, the process is gone within 5 s. */
const SHUTDOWN_LIMIT_MS = 4500;

export function registerServe(program: Command): void {
  const serve = program
    .command('serve')
    .description('start a hookbot instance, listening on http (or https with --sslkey/--sslcrt)')
    // --key and --github-secret are global options; list them here too.
    .configureHelp({ showGlobalOptions: true });
  for (const spec of Object.values(SERVE_OPTIONS) as OptionSpec[]) if (!spec.global) serve.addOption(commanderOption(spec));

  serve.action(async (_opts: unknown, cmd: Command) => {
    const config = resolveServeConfig(typedOptions(cmd), process.env);
    const log = createLogger(config.logLevel);
    const server = await startServer(config, log);
    const shutdown = (signal: string) => {
      log.info({ signal }, 'shutting down');
      setTimeout(() => process.exit(0), SHUTDOWN_LIMIT_MS).unref();
      server.close().then(
        () => {
          log.flush();
          process.exit(0);
        },
        () => process.exit(0),
      );
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
  });
}
