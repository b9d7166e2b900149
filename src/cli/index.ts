/**
 * The `hookbot` command line: `serve` and `make-tokens` as the original, plus
 * the subscriber commands.
 */
import { Command, Option } from 'commander';
import { registerClientCommands } from './client.js';
import { ConfigError, resolveKeys, resolveServeConfig, type ServeOptions } from '../server/config.js';
import { createLogger } from '../server/log.js';
import { startServer } from '../server/server.js';
import { makeToken } from '../protocol/tokens.js';

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
    .option('--data-dir <dir>', 'keep ids, history and dedupe state in this directory, created if missing (env HOOKBOT_DATA_DIR; default ./hookbot-data)')
    .option('--memory', 'keep history in memory only: nothing survives a restart (env HOOKBOT_MEMORY=1)')
    .option('--fsync <mode>', 'normal: a 200 survives the process dying; always: also a power loss, fsync before each 200 (env HOOKBOT_FSYNC; default normal)')
    .option('--redis <url>', 'cluster mode: keep history and fan out through Redis: redis[s]://[:password@]host:port[/db], redis[s]-sentinel://host:26379[,host...]/<master>[/db] or redis[s]-cluster://host:port[,host...] (env HOOKBOT_REDIS_URL)')
    .option('--ping-interval <duration>', 'ping subscribers this often; no pong by the next ping disconnects', '30s')
    .option('--sse-heartbeat <duration>', 'send Server-Sent Events subscribers a `: ping` comment this often', '15s')
    .option('--stats-interval <duration>', 'how often the stats line is logged', '60s')
    .option('--router <name>', 'run an in-server router: github, gitlab (repeatable)', collect)
    .option('--github-secret <secrets>', 'GitHub webhook secret(s) the github router verifies with, comma-separated (env HOOKBOT_GITHUB_SECRET)', collect)
    .option('--gitlab-token <tokens>', 'GitLab webhook secret token(s) the gitlab router accepts, comma-separated (env HOOKBOT_GITLAB_TOKEN)', collect)
    .option('--dedupe-window <duration>', 'how long routers remember delivery ids, so a redelivery is re-published once', '1h')
    .option('--metrics-token <token>', 'require Authorization: Bearer <token> on /metrics (env HOOKBOT_METRICS_TOKEN; default: /metrics is open)')
    .option('--rate-limit <n>', 'publishes per second per client address, 429 beyond; 0 disables (env HOOKBOT_RATE_LIMIT; default 100)')
    .option('--rate-limit-burst <n>', 'publishes a client may make at once before --rate-limit applies (env HOOKBOT_RATE_LIMIT_BURST; default: same as --rate-limit)')
    .option('--max-subscribers-per-ip <n>', 'concurrent subscribers per client address, 429 beyond; 0 disables (env HOOKBOT_MAX_SUBSCRIBERS_PER_IP; default 200)')
    .option('--max-subscriptions <n>', 'concurrent subscriptions on this server, 503 beyond; 0 disables (env HOOKBOT_MAX_SUBSCRIPTIONS; default 10000)')
    .option('--limit-exempt <cidrs>', 'client addresses/ranges the per-address limits skip, comma-separated; "" for none (env HOOKBOT_LIMIT_EXEMPT; default 127.0.0.0/8,::1)')
    .option('--trust-proxy [hops]', 'take the client address from X-Forwarded-For, set by this many proxies in front (default when given: 1; env HOOKBOT_TRUST_PROXY)')
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

  registerClientCommands(program);

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
