/**
 * `hookbot new-channel`: mints smee channel URLs from the command line, as
 * `GET /new` does on a server run with --smee and the same HOOKBOT_KEY. Minting
 * needs no server and no state: the id carries a tag of the key.
 */
import { Option, type Command } from 'commander';
import { ChannelIds } from '../protocol/channels.js';
import { ConfigError, parsePublicUrl } from '../server/config.js';
import { keysOf } from './options.js';

const DEFAULT_PUBLIC_URL = 'http://localhost:8080';

export function registerNewChannel(program: Command): void {
  program
    .command('new-channel')
    .description('mint smee channel URLs (for serve --smee with the same key), one per line')
    .configureHelp({ showGlobalOptions: true })
    .addOption(
      new Option('--public-url <url>', 'scheme, host (and path) of the server, as its --public-url')
        .env('HOOKBOT_PUBLIC_URL')
        .default(DEFAULT_PUBLIC_URL, DEFAULT_PUBLIC_URL),
    )
    .option('--bare', 'print only the channel ids')
    .addOption(new Option('-n, --count <n>', 'how many').default('1', '1'))
    .action((opts: { publicUrl: string; bare?: boolean; count: string }, cmd: Command) => {
      const ids = new ChannelIds(keysOf(cmd));
      const base = parsePublicUrl(opts.publicUrl, '--public-url') ?? parsePublicUrl(DEFAULT_PUBLIC_URL, '--public-url')!;
      const count = Number(opts.count);
      if (!/^\d+$/.test(opts.count) || count < 1 || count > 1000) throw new ConfigError(`--count must be a whole number from 1 to 1000, got ${JSON.stringify(opts.count)}`);
      for (let i = 0; i < count; i++) {
        const id = ids.mint();
        process.stdout.write((opts.bare ? id : base + id) + '\n');
      }
    });
}
