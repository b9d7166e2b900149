/**
 * Commander options made from the server's option table, and the global
 * options every command can read (`--key`, `--github-secret`), placed before
 * the command as the original has them, or after it.
 */
import { Option, type Command } from 'commander';
import { resolveKeys, SERVE_OPTIONS } from '../server/config.js';
import { readOption, type OptionSpec } from '../server/options.js';

/** For repeatable options: each use adds one; the first replaces commander's display-only default. */
export const collect = (value: string, previous: unknown): string[] => (Array.isArray(previous) ? [...previous, value] : [value]);

/**
 * A commander option for one table entry, its variable and default shown in
 * --help. Commander's default and env reading are for --help only: actions
 * pass on what was typed (`typedOptions`) and the server's table applies the
 * variable and the default itself, so a value is parsed and validated once,
 * and an error can say which variable it came from.
 */
export function commanderOption(spec: OptionSpec): Option {
  const option = new Option(spec.flags, spec.help).env(spec.env);
  if (spec.kind === 'list') option.argParser(collect);
  const shown = spec.default ?? spec.defaultText;
  if (shown !== undefined) {
    // A bare `--trust-proxy` (or flag) takes commander's default when truthy, so it must be false here.
    option.default(spec.kind === 'optional' || spec.kind === 'flag' ? false : shown, shown);
  }
  return option;
}

/** The options typed on the command line (this command's and the global ones), nothing from env or defaults. */
export function typedOptions(cmd: Command): Record<string, unknown> {
  const typed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(cmd.optsWithGlobals())) {
    if (cmd.getOptionValueSourceWithGlobals(name) === 'cli') typed[name] = value;
  }
  return typed;
}

/** The global options, on the program: the table's entries marked global. */
export function addGlobalOptions(program: Command): void {
  for (const spec of Object.values(SERVE_OPTIONS) as OptionSpec[]) if (spec.global) program.addOption(commanderOption(spec));
}

/**
 * `--key` (before or after the command) or HOOKBOT_KEY, then HOOKBOT_PREVIOUS_KEYS;
 * throws `HOOKBOT_KEY not set` when there is none.
 */
export function keysOf(cmd: Command, env: NodeJS.ProcessEnv = process.env): string[] {
  return resolveKeys(typedOptions(cmd).key as string | undefined, env);
}

/** `--github-secret` (repeatable, comma-separated) or HOOKBOT_GITHUB_SECRET, as serve reads them. */
export function githubSecretsOf(cmd: Command, env: NodeJS.ProcessEnv = process.env): string[] {
  return githubSecretsFrom(typedOptions(cmd).githubSecret as string[] | undefined, env);
}

/** The same, from the `--github-secret` values already taken from the command line. */
export function githubSecretsFrom(given: string[] | undefined, env: NodeJS.ProcessEnv): string[] {
  return readOption(SERVE_OPTIONS.githubSecret, given, env) as string[];
}
