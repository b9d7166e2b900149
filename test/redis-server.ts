/**
 * A real `redis-server` for tests: on a free port, stoppable and restartable on
 * the same port so tests can take Redis away and back. No persistence unless
 * asked for; `persistent` keeps an append-only file fsynced before every answer
 * (in a temporary directory), so a restart, even after SIGKILL, keeps every
 * write Redis acknowledged.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './helpers.js';

export { freePort };

/** One PING over a raw socket; true when the answer is +PONG. */
function ping(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    let data = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      data += d.toString();
      if (data.includes('\r\n')) done(data.startsWith('+PONG'));
    });
    sock.on('error', () => done(false));
  });
}

export interface RedisServerOptions {
  persistent?: boolean;
}

export class RedisServer {
  readonly port: number;
  #proc: ChildProcess | undefined;
  #stderr = '';
  #dir: string | undefined;

  constructor(port: number, options: RedisServerOptions = {}) {
    this.port = port;
    if (options.persistent) this.#dir = mkdtempSync(join(tmpdir(), 'hookbot-redis-'));
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#proc !== undefined;
  }

  /** Starts redis-server and waits until it answers PING. */
  async start(timeoutMs = 10_000): Promise<void> {
    if (this.#proc) throw new Error('redis-server already running');
    const proc = spawn(
      'redis-server',
      [
        '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--loglevel', 'warning',
        ...(this.#dir ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', this.#dir] : ['--appendonly', 'no']),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.#proc = proc;
    proc.stderr.on('data', (d) => (this.#stderr += d.toString()));
    let exited: string | undefined;
    proc.once('exit', (code, signal) => {
      exited = `redis-server exited (${code ?? signal}) ${this.#stderr}`;
      if (this.#proc === proc) this.#proc = undefined;
    });
    proc.once('error', (err) => (exited = `cannot run redis-server: ${err.message}`));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited) throw new Error(exited);
      if (await ping(this.port)) return;
      if (Date.now() > deadline) {
        await this.stop('SIGKILL');
        throw new Error(`redis-server on port ${this.port} did not answer PING within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stops it (SIGTERM: clean shutdown; SIGKILL: as if the host died) and waits for the exit. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM', timeoutMs = 5000): Promise<void> {
    const proc = this.#proc;
    if (!proc) return;
    this.#proc = undefined;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  /** Sends a signal without waiting, e.g. SIGSTOP/SIGCONT to make Redis hang and come back. */
  signal(signal: NodeJS.Signals): void {
    this.#proc?.kill(signal);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Stops it and deletes its files for good. */
  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    if (this.#dir) rmSync(this.#dir, { recursive: true, force: true });
  }
}

/** A running redis-server on a free port. */
export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer> {
  for (let attempt = 0; ; attempt++) {
    const server = new RedisServer(await freePort(), options);
    try {
      await server.start();
      return server;
    } catch (err) {
      await server.destroy();
      // Another process may have taken the port between freePort() and the bind.
      if (attempt >= 2) throw err;
    }
  }
}
