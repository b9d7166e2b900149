/**
 * The `hookbot` command line: `serve` and `make-tokens` as the original, plus
 * the subscriber commands.
 */
import { Command, Option } from 'commander';
import { ConfigError, resolveKeys, resolveServeConfig, type ServeOptions } from './config.js';
import { createLogger } from './log.js';
import { startServer } from './server.js';
import { makeToken } from './tokens.js';

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** The URL make-tokens prints for one argument, as the original builds it. */
export function tokenUrl(key: string, arg: string, urlBase: string, bare: boolean): string {
  const base = new URL(urlBase);
  // Parse the argument against the base so its own scheme and host, if any, win.
  const target = new URL(arg, base);
  const path = decodeURIComponent(target.pathname);
  const token = makeToken(key, path);
  if (bare) return token;
  const secure = target.protocol === 'https:' || target.protocol === 'wss:';
  const isSub = path.startsWith('/sub') || path.startsWith('/unsafe/sub');
  const scheme = isSub ? (secure ? 'wss' : 'ws') : secure ? 'https' : 'http';
  return `${scheme}://${token}@${target.host}${target.pathname}${target.search}${target.hash}`;
}

export function buildProgram(): Command {
  const program = new Command('hookbot')
    .description('A hookbot-compatible webhook relay: publish over HTTP, subscribe over WebSocket or SSE')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('serve')
    .description('run the relay server')
    .option('--bind <addr>', 'address to listen on, host:port or :port (env HOOKBOT_BIND)', ':8080')
    .option('--key <key>', 'HMAC key for tokens (env HOOKBOT_KEY)')
    .option('--sslkey <file>', 'TLS private key (PEM); with --sslcrt serves HTTPS/WSS only')
    .option('--sslcrt <file>', 'TLS certificate (PEM)')
    .option('--max-body <size>', 'largest publish body', '25MiB')
    .option('--max-subscriber-buffer <size>', 'bytes queued for one subscriber before it is disconnected (1013)', '8MiB')
    .option('--keep-header <name>', 'also keep this request header with each message (repeatable, or comma-separated)', collect)
    .option('--history <count>', 'messages kept per topic for resume (0 disables history)', '100')
    .option('--history-bytes <size>', 'body bytes kept per topic', '8MiB')
    .option('--history-age <duration>', 'how long a message is kept', '24h')
    .option('--history-total-bytes <size>', 'body bytes kept across all topics', '256MiB')
    .option('--ping-interval <duration>', 'ping subscribers this often; no pong by the next ping disconnects', '30s')
    .option('--stats-interval <duration>', 'how often the stats line is logged', '60s')
    .addOption(new Option('--log-level <level>', 'log level (env HOOKBOT_LOG_LEVEL)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .action(async (opts: ServeOptions) => {
      const config = resolveServeConfig(opts);
      const log = createLogger(config.logLevel);
      const server = await startServer(config, log);
      const shutdown = (signal: string) => {
        log.info({ signal }, 'shutting down');
        // Whatever happens, the process is gone within 5 s.
        setTimeout(() => process.exit(0), 4500).unref();
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

  program
    .command('make-tokens')
    .description('print a token URL (or bare token) for each path')
    .option('--bare', 'print only the token')
    .option('--url-base <url>', 'base URL (env HOOKBOT_URL_BASE)')
    .option('--key <key>', 'HMAC key (env HOOKBOT_KEY)')
    .argument('<uri...>', 'paths such as /pub/foo/bar or /sub/foo/')
    .action((uris: string[], opts: { bare?: boolean; urlBase?: string; key?: string }) => {
      const [key] = resolveKeys(opts.key, process.env);
      const urlBase = opts.urlBase ?? process.env.HOOKBOT_URL_BASE ?? 'http://localhost:8080';
      for (const uri of uris) {
        let line: string;
        try {
          line = tokenUrl(key, uri, urlBase, Boolean(opts.bare));
        } catch {
          throw new ConfigError(`make-tokens: cannot parse ${JSON.stringify(uri)} against --url-base ${JSON.stringify(urlBase)}`);
        }
        process.stdout.write(line + '\n');
      }
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') process.exit(0);
    if (code?.startsWith('commander.')) process.exit((err as { exitCode?: number }).exitCode ?? 1);
    throw err;
  }
}
