/**
 * `hookbot make-tokens` (alias `t`): a token URL, or a bare token, per path,
 * byte-identical to the original's output.
 */
import { Option, type Command } from 'commander';
import { ConfigError } from '../server/config.js';
import { makeToken } from '../protocol/tokens.js';
import { keysOf } from './options.js';

const DEFAULT_URL_BASE = 'http://localhost:8080';

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

export function registerMakeTokens(program: Command): void {
  program
    .command('make-tokens')
    .alias('t')
    .description('given a list of URIs, print a token URL (or bare token) for each, one per line')
    .configureHelp({ showGlobalOptions: true })
    .option('--bare', 'print only the tokens, not as basic-auth URLs')
    .addOption(
      new Option('-U, --url-base <url>', 'base URL: scheme and host, unless an argument has its own (not part of the HMAC)')
        .env('HOOKBOT_URL_BASE')
        .default(DEFAULT_URL_BASE, DEFAULT_URL_BASE),
    )
    .argument('<uri...>', 'paths such as /pub/foo/bar or /sub/foo/')
    .action((uris: string[], opts: { bare?: boolean; urlBase: string }, cmd: Command) => {
      const [key] = keysOf(cmd);
      for (const uri of uris) {
        let line: string;
        try {
          line = tokenUrl(key, uri, opts.urlBase, Boolean(opts.bare));
        } catch {
          throw new ConfigError(`make-tokens: cannot parse ${JSON.stringify(uri)} against --url-base ${JSON.stringify(opts.urlBase)}`);
        }
        process.stdout.write(line + '\n');
      }
    });
}
