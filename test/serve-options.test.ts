/**
 * The serve option table (src/server/options.ts): every option has its
 * HOOKBOT_* variable and reads the same from it as from its flag, commander's
 * attribute names match the table, and `hookbot serve --help` (the built CLI)
 * and README.md's serve flag table list the same flags, variables and defaults.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { describe, expect, it } from 'vitest';
import { DEFAULT_RETENTION } from '../src/server/backends/backend.js';
import { resolveServeConfig, SERVE_DEFAULTS, SERVE_OPTIONS, type ServeOptions } from '../src/server/config.js';
import { LIMIT_DEFAULTS } from '../src/server/ops/limits.js';
import { longFlag, readOption, type OptionSpec } from '../src/server/options.js';
import { addGlobalOptions, commanderOption, githubSecretsOf, keysOf, typedOptions } from '../src/cli/options.js';
import { ROOT, runCli } from './helpers.js';

const entries = Object.entries(SERVE_OPTIONS) as Array<[keyof ServeOptions, OptionSpec]>;

describe('the serve option table', () => {
  it('names each entry as commander names its flag, and each flag shape matches its kind', () => {
    for (const [name, spec] of entries) {
      expect(new Option(spec.flags).attributeName(), spec.flags).toBe(name);
      const shape = spec.flags.includes('<') ? 'value' : spec.flags.includes('[') ? 'optional' : 'flag';
      expect(spec.kind === 'list' ? 'value' : spec.kind, spec.flags).toBe(shape);
    }
  });

  it('gives every option HOOKBOT_<FLAG> (only --redis keeps its older HOOKBOT_REDIS_URL)', () => {
    for (const [name, spec] of entries) {
      const rule = 'HOOKBOT_' + longFlag(spec).slice(2).toUpperCase().replace(/-/g, '_');
      expect(spec.env, name).toBe(name === 'redis' ? 'HOOKBOT_REDIS_URL' : rule);
    }
  });

  it('reads each option from its variable exactly as from its flag, and the flag wins', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-options-'));
    const keyFile = join(dir, 'key.pem');
    const crtFile = join(dir, 'crt.pem');
    writeFileSync(keyFile, 'key');
    writeFileSync(crtFile, 'crt');
    // A non-default value per option, as a flag and as the variable's string; plus what else it needs.
    const samples: Record<keyof ServeOptions, { flag: unknown; env: string; needs?: ServeOptions }> = {
      bind: { flag: '127.0.0.1:9999', env: '127.0.0.1:9999' },
      key: { flag: 'other-key', env: 'other-key' },
      sslkey: { flag: keyFile, env: keyFile, needs: { sslcrt: crtFile } },
      sslcrt: { flag: crtFile, env: crtFile, needs: { sslkey: keyFile } },
      maxBody: { flag: '1KiB', env: '1KiB' },
      maxSubscriberBuffer: { flag: '64KiB', env: '64KiB' },
      keepHeader: { flag: ['X-One', 'x-two'], env: 'X-One,x-two' },
      history: { flag: '5', env: '5' },
      historyBytes: { flag: '1MiB', env: '1MiB' },
      historyAge: { flag: '5m', env: '5m' },
      historyTotalBytes: { flag: '2MiB', env: '2MiB' },
      historyTopics: { flag: '50', env: '50' },
      maxConnectionsPerIp: { flag: '12', env: '12' },
      maxBodyInFlight: { flag: '1MiB', env: '1MiB', needs: { maxBody: '1MiB' } },
      headerTimeout: { flag: '3s', env: '3s' },
      bodyTimeout: { flag: '4s', env: '4s' },
      idleTimeout: { flag: '2s', env: '2s' },
      redis: { flag: 'redis://127.0.0.1:1/2', env: 'redis://127.0.0.1:1/2' },
      dataDir: { flag: '/tmp/elsewhere', env: '/tmp/elsewhere' },
      memory: { flag: true, env: '1' },
      fsync: { flag: 'always', env: 'always' },
      catchUpAge: { flag: '90s', env: '90s' },
      catchUpCount: { flag: '500', env: '500' },
      catchUpBytes: { flag: '1MiB', env: '1MiB' },
      pingInterval: { flag: '5s', env: '5s' },
      sseHeartbeat: { flag: '5s', env: '5s' },
      statsInterval: { flag: '5s', env: '5s' },
      router: { flag: ['gitlab'], env: 'gitlab', needs: { gitlabToken: ['t'] } },
      githubSecret: { flag: ['a', 'b'], env: 'a,b' },
      gitlabToken: { flag: ['t1,t2'], env: 't1,t2' },
      dedupeWindow: { flag: '5m', env: '5m' },
      metricsToken: { flag: 'scrape', env: 'scrape' },
      rateLimit: { flag: '7', env: '7' },
      rateLimitBurst: { flag: '9', env: '9' },
      maxSubscribersPerIp: { flag: '3', env: '3' },
      maxSubscriptions: { flag: '4', env: '4' },
      limitExempt: { flag: '10.0.0.0/8', env: '10.0.0.0/8' },
      trustProxy: { flag: true, env: 'true' },
      smee: { flag: true, env: 'true' },
      publicUrl: { flag: 'https://relay.example.com/hooks', env: 'https://relay.example.com/hooks' },
      logLevel: { flag: 'warn', env: 'warn' },
    };
    expect(Object.keys(samples).sort()).toEqual(entries.map(([name]) => name).sort());
    for (const [name, spec] of entries) {
      const { flag, env, needs } = samples[name];
      const base: ServeOptions = { key: 'k', ...needs };
      if (name === 'key') delete base.key;
      const fromFlag = resolveServeConfig({ ...base, [name]: flag }, {});
      expect(resolveServeConfig(base, { [spec.env]: env }), name).toEqual(fromFlag);
      if (name !== 'key') expect(resolveServeConfig({ key: 'k' }, {}), `${name} sample is not the default`).not.toEqual(fromFlag);
      // The flag wins: the variable is then not even parsed.
      expect(resolveServeConfig({ ...base, [name]: flag }, { [spec.env]: 'garbage!' }), name).toEqual(fromFlag);
    }
  });

  it('has one defaults object, the documented defaults', () => {
    const c = resolveServeConfig({ key: 'k' }, {});
    expect(c.retention).toEqual(DEFAULT_RETENTION);
    expect(c).toMatchObject({
      bind: { host: undefined, port: 8080 },
      maxBody: 25 * 1024 * 1024,
      maxSubscriberBuffer: 8 * 1024 * 1024,
      pingIntervalMs: 30_000,
      sseHeartbeatMs: 15_000,
      statsIntervalMs: 60_000,
      dedupeWindowMs: 3_600_000,
      logLevel: 'info',
      routers: [],
      keepHeaders: [],
      rateLimit: LIMIT_DEFAULTS.rateLimit,
      rateLimitBurst: LIMIT_DEFAULTS.rateLimit,
      maxSubscriptions: LIMIT_DEFAULTS.maxSubscriptions,
      limitExempt: [...LIMIT_DEFAULTS.limitExempt],
    });
    expect(SERVE_DEFAULTS).toMatchObject({ maxBody: c.maxBody, history: DEFAULT_RETENTION.count, historyAge: DEFAULT_RETENTION.ageMs, trustProxy: 0, key: undefined });
  });

  it('errors name the option, and the variable when the value came from one', () => {
    expect(() => resolveServeConfig({ key: 'k', maxBody: '0' }, {})).toThrow(/^--max-body must be at least 1 byte$/);
    expect(() => resolveServeConfig({ key: 'k' }, { HOOKBOT_MAX_BODY: '0' })).toThrow(/^--max-body must be at least 1 byte \(from HOOKBOT_MAX_BODY\)$/);
    // A body the in-flight budget can never hold would be refused every time.
    expect(() => resolveServeConfig({ key: 'k', maxBody: '300MiB' }, {})).toThrow(/^--max-body 300MiB is larger than --max-body-in-flight 256MiB: .*raise --max-body-in-flight \(0 disables it\) or lower --max-body$/);
    expect(() => resolveServeConfig({ key: 'k', maxBodyInFlight: '1MiB' }, {})).toThrow(/--max-body 25MiB is larger than --max-body-in-flight 1MiB/);
    expect(resolveServeConfig({ key: 'k', maxBody: '300MiB', maxBodyInFlight: '0' }, {}).maxBody).toBe(300 * 1024 * 1024);
    expect(() => resolveServeConfig({ key: 'k' }, { HOOKBOT_ROUTER: 'bitbucket' })).toThrow(/^--router "bitbucket" is not a router; available: github, gitlab \(from HOOKBOT_ROUTER\)$/);
    expect(() => resolveServeConfig({ key: 'k' }, { HOOKBOT_KEEP_HEADER: 'Authorization' })).toThrow(/--keep-header authorization would store credentials/);
    expect(() => resolveServeConfig({ key: 'k', publicUrl: 'relay.example.com' }, {})).toThrow(/^--public-url must be an absolute URL such as https:\/\/hookbot.example.com, got "relay.example.com"$/);
    expect(() => resolveServeConfig({ key: 'k' }, { HOOKBOT_PUBLIC_URL: 'https://relay.example.com/?a=1' })).toThrow(/^--public-url must be scheme, host .* \(from HOOKBOT_PUBLIC_URL\)$/);
    expect(resolveServeConfig({ key: 'k', publicUrl: 'https://relay.example.com' }, {}).publicUrl).toBe('https://relay.example.com/');
  });
});

describe('commander options from the table', () => {
  /** A program with the global options and a `serve`-like command that keeps what its action saw. */
  function program(specs: OptionSpec[]): { run: (args: string[]) => Record<string, unknown>; cmd: () => Command } {
    let seen: Command | undefined;
    const prog = new Command('hookbot').exitOverride();
    addGlobalOptions(prog);
    const serve = prog.command('serve').action((_o: unknown, cmd: Command) => {
      seen = cmd;
    });
    for (const spec of specs) serve.addOption(commanderOption(spec));
    return {
      run: (args) => {
        prog.parse(args, { from: 'user' });
        return typedOptions(seen!);
      },
      cmd: () => seen!,
    };
  }

  it('hands over only what was typed: globals before or after the command, repeatable lists, a bare optional value', () => {
    const p = program([SERVE_OPTIONS.router, SERVE_OPTIONS.trustProxy, SERVE_OPTIONS.maxBody]);
    expect(p.run(['--key', 'k', '--github-secret', 'a', 'serve', '--router', 'github', '--github-secret', 'b,c', '--trust-proxy'])).toEqual({
      key: 'k',
      githubSecret: ['a', 'b,c'],
      router: ['github'],
      trustProxy: true,
    });
    expect(keysOf(p.cmd(), {})).toEqual(['k']);
    expect(githubSecretsOf(p.cmd(), { HOOKBOT_GITHUB_SECRET: 'env' })).toEqual(['a', 'b', 'c']);
  });

  it('leaves variables and defaults to the table (read and validated once), and shows them in --help', () => {
    try {
      process.env.HOOKBOT_MAX_BODY = 'lots';
      process.env.HOOKBOT_GITHUB_SECRET = 's1,s2';
      const p = program([SERVE_OPTIONS.maxBody]);
      // Commander saw the variable, but the action is not handed it: the table parses it, naming it if bad.
      expect(p.run(['serve'])).toEqual({});
      expect(githubSecretsOf(p.cmd())).toEqual(['s1', 's2']);
      expect(() => resolveServeConfig({ key: 'k' }, process.env)).toThrow(/--max-body must be a size .* \(from HOOKBOT_MAX_BODY\)/);
      expect(p.cmd().helpInformation().replace(/\s+/g, ' ')).toContain('largest publish body (default: 25MiB, env: HOOKBOT_MAX_BODY)');
    } finally {
      delete process.env.HOOKBOT_MAX_BODY;
      delete process.env.HOOKBOT_GITHUB_SECRET;
    }
  });

  it('an on/off flag (kind "flag"): bare is on, its variable takes 1/true/yes/on and 0/false/no/off', () => {
    const fsync: OptionSpec = { kind: 'flag', flags: '--fsync', env: 'HOOKBOT_FSYNC', default: 'false', help: 'fsync each write' };
    expect(program([fsync]).run(['serve', '--fsync'])).toEqual({ fsync: true });
    expect(readOption(fsync, true, {})).toBe(true);
    expect(readOption(fsync, undefined, {})).toBe(false);
    expect(readOption(fsync, undefined, { HOOKBOT_FSYNC: 'yes' })).toBe(true);
    expect(readOption(fsync, undefined, { HOOKBOT_FSYNC: '0' })).toBe(false);
    expect(() => readOption(fsync, undefined, { HOOKBOT_FSYNC: 'maybe' })).toThrow(/^--fsync must be true or false, got "maybe" \(from HOOKBOT_FSYNC\)$/);
  });
});

interface Documented {
  short?: string;
  env?: string;
  default: string;
}

/** `serve --help`'s options (its own and the global ones, without -h and -v), unwrapped. */
function parseHelp(text: string): Map<string, Documented> {
  const items: string[] = [];
  let inOptions = false;
  for (const line of text.split('\n')) {
    if (/^\S/.test(line)) inOptions = /Options:$/.test(line);
    else if (inOptions && /^ {2}-/.test(line)) items.push(line.trim());
    else if (inOptions && /^ {4,}\S/.test(line)) items[items.length - 1] += ' ' + line.trim();
  }
  const out = new Map<string, Documented>();
  for (const item of items) {
    const flags = /^(?:(-[a-zA-Z]), )?(--[a-z0-9-]+)/.exec(item)!;
    if (flags[2] === '--help' || flags[2] === '--version') continue;
    const extra = /\((?:default: ([^()]*), )?env: (HOOKBOT_\w+)\)$/.exec(item);
    out.set(flags[2], { short: flags[1], env: extra?.[2], default: extra?.[1] ?? '' });
  }
  return out;
}

/** README.md's `hookbot serve` flag table: rows with a flag (env-only rows such as HOOKBOT_PREVIOUS_KEYS are skipped). */
function parseReadme(text: string): Map<string, Documented> {
  const section = text.slice(text.indexOf('## `hookbot serve`'));
  const table = section.slice(section.indexOf('\n| flag |'), section.indexOf('\n\n', section.indexOf('\n| flag |') + 1));
  const out = new Map<string, Documented>();
  for (const row of table.trim().split('\n').slice(2)) {
    const [flagCell, envCell, defaultCell] = row.trim().replace(/^\||\|$/g, '').split('|');
    const long = /--[a-z0-9-]+/.exec(flagCell)?.[0];
    if (!long) continue;
    expect(out.has(long), `README lists ${long} twice`).toBe(false);
    const strip = (cell: string) => cell.replace(/`/g, '').trim();
    out.set(long, { short: /(?:^|[`\s])(-[a-zA-Z])\b/.exec(flagCell)?.[1], env: strip(envCell) || undefined, default: strip(defaultCell) });
  }
  return out;
}

describe('serve --help and README.md', () => {
  it('list the same flags, short flags, variables and defaults, which are the table', async () => {
    const p = runCli(['serve', '--help']);
    expect((await p.exit).code).toBe(0);
    const help = parseHelp(p.stdout());
    const readme = parseReadme(readFileSync(join(ROOT, 'README.md'), 'utf8'));

    const table = new Map(entries.map(([, spec]) => [longFlag(spec), spec]));
    expect([...help.keys()].sort()).toEqual([...table.keys()].sort());
    expect([...readme.keys()].sort()).toEqual([...help.keys()].sort());
    for (const [flag, shown] of help) {
      const spec = table.get(flag)!;
      expect(shown.env, flag).toBe(spec.env);
      expect(shown.default, flag).toBe(spec.default ?? spec.defaultText ?? '');
      expect(readme.get(flag), `README row for ${flag}`).toEqual(shown);
    }
  });
});
