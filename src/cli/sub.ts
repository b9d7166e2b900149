/**
 * `hookbot sub`: print each message, or run a command for each, in order.
 */
import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { ConfigError, parseCount, parseDuration } from '../server/config.js';
import type { Message } from '../client/index.js';
import type { Logger } from '../server/log.js';
import { commonOptions, eventOf, retryDelay, runClient, sleep, withDefault, type CommonOptions, type Handler } from './subscriber.js';

interface SubOptions extends CommonOptions {
  json?: boolean;
  exec?: string;
  retry: string;
  retryDelay: string;
  ca?: string;
  insecure?: boolean;
}

export function registerSub(program: Command): void {
  commonOptions(
    program
      .command('sub')
      .description('subscribe and print each message (or run --exec for each)')
      .argument('<url>', 'ws[s]://TOKEN@host/sub/<topic>, or a smee channel URL (http[s]:// also accepted)'),
  )
    .option('--json', 'one JSON object per line: id, topic, time, headers, body (+ "encoding":"base64" when binary)')
    .option('--exec <command>', 'run this shell command per message, body on stdin, one at a time, in order')
    .addOption(withDefault('--retry <n>', 'with --exec: retries after a non-zero exit', '0'))
    .addOption(withDefault('--retry-delay <duration>', 'first retry delay (doubles, with jitter, up to 30s)', '1s'))
    .option('--ca <file>', 'trust this CA (PEM) for a wss:// server')
    .option('--insecure', 'do not verify the wss:// server certificate')
    .action((url: string, opts: SubOptions) => runClient(url, opts, (log) => subHandler(opts, log)));
}

function subHandler(opts: SubOptions, log: Logger): Handler {
  const retries = parseCount(opts.retry, '--retry');
  const baseDelay = parseDuration(opts.retryDelay, '--retry-delay');
  const command = opts.exec;
  if (command !== undefined) {
    if (!command.trim()) throw new ConfigError('--exec needs a command');
    return async (m, signal) => {
      for (let attempt = 0; ; attempt++) {
        const started = Date.now();
        const result = await runCommand(command, m);
        const ms = Date.now() - started;
        if (result === 0) {
          log.info({ id: m.id, topic: m.topic, event: eventOf(m) || undefined, ms }, `exec ${m.id} ok in ${ms} ms`);
          return;
        }
        const failure = typeof result === 'number' ? `exit code ${result}` : result;
        if (attempt >= retries) {
          log.error({ id: m.id, topic: m.topic, failure, attempts: attempt + 1 }, `exec ${m.id} failed (${failure}); giving up on it`);
          return;
        }
        const delay = retryDelay(attempt, baseDelay);
        log.warn({ id: m.id, topic: m.topic, failure, attempt: attempt + 1, retryInMs: delay }, `exec ${m.id} failed (${failure}); retrying`);
        // Stopping mid-backoff leaves the message unprocessed: it runs again on restart.
        await sleep(delay, signal);
      }
    };
  }

  const out = process.stdout;
  let broken = false;
  out.on('error', (err: NodeJS.ErrnoException) => {
    // A closed pipe (`hookbot sub ... | head`) is a normal way to stop.
    broken = true;
    if (err.code !== 'EPIPE') log.error({ err: err.message }, 'stdout failed');
    process.exit(err.code === 'EPIPE' ? 0 : 1);
  });
  return async (m, _signal, sub) => {
    if (broken) return;
    let chunk: Buffer;
    if (opts.json) {
      chunk = Buffer.from(JSON.stringify(m.toJSON()) + '\n');
    } else {
      const body = m.body;
      const parts = sub.recursive ? [Buffer.from(`${m.topic}\t`), body] : [body];
      if (body.length === 0 || body[body.length - 1] !== 0x0a) parts.push(NEWLINE);
      chunk = Buffer.concat(parts);
    }
    // Waiting for drain keeps memory bounded and "processed" honest.
    if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', resolve));
  };
}

const NEWLINE = Buffer.from('\n');

/** Runs the command with the body on stdin; 0, another exit code, or a description of how it died. */
function runCommand(command: string, m: Message): Promise<number | string> {
  return new Promise((resolve) => {
    const child = spawn(command, {
      shell: true,
      stdio: ['pipe', 'inherit', 'inherit'],
      env: { ...process.env, HOOKBOT_TOPIC: m.topic, HOOKBOT_ID: m.id, HOOKBOT_EVENT: eventOf(m) },
    });
    // A command that does not read its stdin closes the pipe early; that is fine.
    child.stdin.on('error', () => {});
    child.stdin.end(m.body);
    child.on('error', (err) => resolve(`cannot run: ${err.message}`));
    child.on('close', (code, signal) => resolve(code ?? `killed by ${signal}`));
  });
}

