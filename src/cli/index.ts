/**
 * The `hookbot` command line: the program, its global options and `main`.
 * Each command is a file of its own: serve, make-tokens, new-channel, sub,
 * forward (and route-github). The original's command lines work unchanged: `--key` and
 * `--github-secret` before the command (or after it), `-v`, `help`/`h`, its
 * short flags and aliases, and Go-style single-dash long flags.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { registerForward } from './forward.js';
import { registerMakeTokens } from './make-tokens.js';
import { registerNewChannel } from './new-channel.js';
import { addGlobalOptions } from './options.js';
import { registerServe } from './serve.js';
import { registerRouteGithub } from './route-github.js';
import { registerSub } from './sub.js';

/** This package's version (dist/cli/index.js → package.json). */
export const VERSION: string = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version;

export function buildProgram(): Command {
  const program: Command = new Command('hookbot')
    .description('turn webhooks into websockets: publish over HTTP, subscribe over outbound WebSocket or SSE')
    .showHelpAfterError()
    .exitOverride()
    // The original's format (`hookbot version 0.13.0`), with this package's own version.
    .version(`hookbot version ${VERSION}`, '-v, --version', 'print the version')
    .helpCommand('help [command]', 'show help for a command (alias: h)');
  // Global options are recognised anywhere on the line (commander's default),
  // so no command may define an option of the same name: it would never see it.
  addGlobalOptions(program);

  registerServe(program);
  registerMakeTokens(program);
  registerNewChannel(program);
  registerRouteGithub(program);
  registerSub(program);
  registerForward(program);

  // `h`: the original's alias of `help` (commander's help command takes no alias).
  program.command('h [command]', { hidden: true }).action((name: string | undefined) => {
    if (name === undefined) program.help();
    const target = program.commands.find((c) => c.name() !== 'h' && (c.name() === name || c.aliases().includes(name)));
    if (!target) program.help({ error: true });
    target.help();
  });

  return program;
}

/**
 * The original parses flags with Go's flag package, which also takes long
 * flags with one dash (`-bind :8080`, `-url-base=…`); commander would read
 * `-bind` as `-b ind`. Rewrites exactly the known long names, before `--`.
 */
export function normalizeArgs(program: Command, args: readonly string[]): string[] {
  const longs = new Set(['--help']);
  const visit = (cmd: Command) => {
    for (const o of cmd.options) if (o.long) longs.add(o.long);
    cmd.commands.forEach(visit);
  };
  visit(program);
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') {
      out.push(...args.slice(i));
      break;
    }
    const m = /^-([a-z][a-z0-9-]+)(=.*)?$/.exec(arg);
    out.push(m && longs.has(`--${m[1]}`) ? `-${arg}` : arg);
  }
  return out;
}

export async function main(argv: string[]): Promise<void> {
  const program: Command = buildProgram();
  const args = normalizeArgs(program, argv.slice(2));
  try {
    // No command at all: the help on stdout and status 0, as the original.
    if (args.length === 0) program.help();
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    const code = (err as { code?: string }).code;
    // Help and version are CommanderErrors with exit code 0; usage errors have 1.
    if (code?.startsWith('commander.')) process.exit((err as { exitCode?: number }).exitCode ?? 1);
    throw err;
  }
}
